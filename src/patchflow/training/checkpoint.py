"""Training checkpoints: atomic, complete and exactly resumable.

A checkpoint holds the model, its EMA, the optimizer, the fp16 grad scaler, the
step (which is also the data position: batches are indexed by step) and the RNG
states. It is written by rank 0 to a temp file and renamed, so a crash never
leaves a half-written checkpoint, and the oldest ones beyond `keep` are removed.
Files are plain `torch.save` dicts of tensors and numbers, loaded with
`weights_only=True` (no pickled code).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import torch
from torch import nn

from patchflow.training.distributed import DistInfo, unwrap

_NAME = re.compile(r"step_(\d{8})\.pt$")


def _is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


class EMA:
    """Exponential moving average of a model's parameters (fp32), shard-aware under FSDP2.

    The decay warms up as `min(decay, (1 + n) / (10 + n))` after n updates (the
    TensorFlow / timm rule): a fixed 0.999 would still average in the random
    initial weights after a few thousand steps, which is all a CPU run has.
    The step comes from the caller, so a resumed run continues the same schedule.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in unwrap(model).named_parameters()}

    def decay_at(self, step: int) -> float:
        """The decay used by the update after optimizer step `step` (0-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        names, params = zip(*unwrap(model).named_parameters())
        shadows = [self.shadow[n] for n in names]
        # One multi-tensor lerp instead of a small op per parameter (the same values).
        torch._foreach_lerp_(shadows, [p.detach().float() for p in params], weight)

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """EMA parameters plus the model's buffers, unsharded, on CPU (call on every rank)."""
        state = {}
        for name, value in unwrap(model).state_dict().items():  # params and persistent buffers
            value = self.shadow.get(name, value)
            state[name] = (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().cpu()
        return state

    def load_full_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, t in self.shadow.items():
            src = state[name].to(torch.float32)
            if hasattr(t, "device_mesh"):  # DTensor shard: take this rank's piece of the full tensor
                from torch.distributed.tensor import distribute_tensor

                src = distribute_tensor(src.to(t.device), t.device_mesh, t.placements)
            t.copy_(src)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state), full and on CPU; collective under FSDP (call on every rank)."""
    if _is_sharded(unwrap(model)):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(unwrap(model), optimizer,
                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}, optimizer.state_dict()


def load_train_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict,
                     optim_state: dict | None) -> None:
    if _is_sharded(unwrap(model)):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(unwrap(model), optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        return
    unwrap(model).load_state_dict(model_state)
    if optimizer is not None and optim_state is not None:
        optimizer.load_state_dict(optim_state)


def save_checkpoint(directory: Path, step: int, payload: dict, info: DistInfo, keep: int) -> Path | None:
    """Write `payload` as `directory/step_XXXXXXXX.pt` atomically (rank 0) and prune old ones."""
    if not info.is_main:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:08d}.pt"
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    try:
        torch.save({**payload, "step": step}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink()
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in step order (temp files and others ignored)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.search(p.name))


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by save_checkpoint (tensors and plain data only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
