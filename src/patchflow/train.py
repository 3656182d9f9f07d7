"""One training loop for the VAE and the DiT, from a laptop CPU to many GPUs.

    patchflow train dit --config configs/tiny.toml --out runs/tiny
    torchrun --nproc_per_node 8 -m patchflow train dit --config configs/shapes-world.toml --out runs/sw

Phases of a step (nanoGPT style): data -> stage loss (train_stages.py) per
micro-batch -> backward with accumulation -> clip, step, EMA -> log ->
checkpoint / samples. Batches are indexed by (step, micro-batch, rank), and all
randomness inside a micro-batch is seeded from the same triple, so `--resume`
continues exactly and N processes equal 1 process with N accumulation steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from patchflow.checkpoint import EMA, list_checkpoints, load_checkpoint, load_train_state, rng_state, \
    save_checkpoint, set_rng_state, train_state
from patchflow.config import Config
from patchflow.data.build import build_dataset
from patchflow.distributed import DistInfo, barrier, cleanup, init_distributed, mean_across, unwrap, wrap_model
from patchflow.flow import loss_by_t_bin
from patchflow.hardware import peak_flops
from patchflow.weights import atomic_write_bytes

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingStopped(RuntimeError):
    """Training was asked to stop (SIGTERM, Ctrl-C): a checkpoint of the last finished step was written."""


class StopSignal:
    """While training, SIGTERM or a first Ctrl-C asks for a clean stop after the current step.

    `name` becomes the signal's name; a second Ctrl-C interrupts at once. Outside the main
    thread (where handlers cannot be installed) nothing is installed. `restore()` undoes it.
    """

    def __init__(self):
        self.name: str | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        if self.name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        print(f"\n{self.name}: stopping after this step with a checkpoint (Ctrl-C again to abort)", flush=True)

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}


# ---------------------------------------------------------------- data order
class StepSampler(Sampler):
    """Index lists for micro-batch (step, micro) of this rank, from `start_step` on.

    Global position g = ((step * accum + micro) * world + rank) * batch + i walks a
    fresh seeded permutation per epoch, so the data order depends only on the
    global batch layout, never on how many processes share it.
    """

    def __init__(self, length: int, batch: int, accum: int, info: DistInfo, start_step: int, steps: int,
                 seed: int, shuffle: bool):
        self.length, self.batch, self.accum, self.info = length, batch, accum, info
        self.start, self.steps, self.seed, self.shuffle = start_step, steps, seed, shuffle
        self._perm: tuple[int, torch.Tensor] | None = None

    def _index(self, g: int) -> int:
        epoch, pos = divmod(g, self.length)
        if not self.shuffle:
            return pos
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch)))
        return int(self._perm[1][pos])

    def __iter__(self):
        w, r = self.info.world_size, self.info.rank
        for step in range(self.start, self.steps):
            for micro in range(self.accum):
                first = ((step * self.accum + micro) * w + r) * self.batch
                yield [self._index(first + i) for i in range(self.batch)]

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum


def collate(items: list) -> dict:
    kept = [it for it in items if it is not None]  # None: an unreadable file, already warned about
    batch = {key: [it[key] for it in kept] for key in (kept[0] if kept else {"captions": None})}
    batch["skipped"] = len(items) - len(kept)
    return batch


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices and conv kernels only.

    Norm scales, biases (every parameter with fewer than 2 dims) and embedding tables
    (`nn.Embedding`) are not decayed: shrinking them towards 0 fights the normalisation
    rather than regularising (nanoGPT, DiT). Frozen parameters are left out.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.ndim < 2 or id(p) in embeddings else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def micro_seed(seed: int, step: int, micro: int, info: DistInfo, accum: int) -> int:
    # The global micro-batch index (micro * world + rank) is the same for 1 process x 2 accum
    # and 2 processes x 1 accum, so both draw the same noise, timesteps and task masks.
    return (seed * 1_000_003 + step) * 4099 + micro * info.world_size + info.rank


# ---------------------------------------------------------------- schedule and precision
def lr_at(step: int, tc) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    if tc.schedule == "constant":
        return tc.lr
    progress = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The dtype of train.precision (TrainConfig checks the name): auto is bf16 on GPUs that have it."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return PRECISIONS[name]


def check_config(config: Config, stage: str) -> None:
    tc = config.train
    for key in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "sequence_parallel"):
        if getattr(tc, key) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {getattr(tc, key)}")
    if not 0 <= tc.token_drop < 1:
        raise ValueError(f"train.token_drop must be in [0, 1), got {tc.token_drop}")
    if stage not in ("dit", "vae"):
        raise ValueError(f"stage must be 'dit' or 'vae', got {stage!r}")


def check_data_geometry(config: Config, vae, patch: tuple = (1, 1, 1)) -> None:
    """Clip lengths and sizes the VAE (and DiT patch) can take, before any step runs."""
    for f in config.data.frames:
        vae.check_frames(f, patch[0], name="data.frames")
    for h, w in config.data.sizes:
        vae.check_size(h, w, patch[1:], names=("data.sizes height", "data.sizes width"))


def freeze_parameters(model: torch.nn.Module, prefixes: list[str]) -> int:
    """Fix the parameters whose names start with any of `prefixes`; returns how many values were frozen."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            roots = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"train.freeze: no parameter name starts with {prefix!r}; top-level modules: {roots}")
    frozen = 0
    for name, p in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


# ---------------------------------------------------------------- the loop
def train(stage_name: str, config: Config, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train `stage_name` ("vae" or "dit") per `config` into run folder `out`; returns `out/final`."""
    from patchflow.train_stages import DiTStage, VAEStage

    check_config(config, stage_name)
    tc, out = config.train, Path(out)
    info = init_distributed(tc.device)
    ckpt_dir = out / "checkpoints"
    existing = list_checkpoints(ckpt_dir)
    if existing and not resume:
        raise ValueError(f"{out} already holds checkpoints (latest {existing[-1].name}); "
                         "pass --resume to continue it or choose another --out")
    if resume and not existing:
        raise ValueError(f"--resume: no checkpoints in {ckpt_dir}")

    if tc.deterministic == "on" or (tc.deterministic == "auto" and info.device.type == "cpu"):
        # Threaded CPU reductions otherwise differ in the last bits from run to run.
        torch.use_deterministic_algorithms(True, warn_only=True)
    # -- build: the same seed on every rank gives identical initial weights
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    stage = (DiTStage if stage_name == "dit" else VAEStage)(config, info.device)
    model = stage.model.to(info.device)
    data_info = info  # whose batches this process draws: with sequence parallelism, its SP group's
    if tc.sequence_parallel > 1:
        from patchflow.sequence_parallel import sequence_parallel_mesh

        if stage_name != "dit":
            raise ValueError("train.sequence_parallel applies to the DiT stage only")
        p = tc.sequence_parallel
        group = sequence_parallel_mesh(p, info.device.type)["sp"].get_group()
        stage.enable_sequence_parallel(group)
        data_info = DistInfo(info.rank // p, info.world_size // p, info.local_rank, info.device)
    if stage_name == "dit":
        check_data_geometry(config, stage.vae, model.config.patch_size)
    elif config.data.dataset == "shapes":
        check_data_geometry(config, model)
    if tc.compile and hasattr(model, "compile_blocks"):
        model.compile_blocks()
    frozen = freeze_parameters(model, tc.freeze)
    if frozen and info.is_main:
        print(f"train.freeze: {frozen:,} parameters fixed ({', '.join(tc.freeze)})")
    wrapped = wrap_model(model, info, tc.distributed)
    ema = EMA(wrapped, tc.ema_decay) if tc.ema_decay > 0 else None
    dtype = resolve_precision(tc.precision, info.device)
    fused = info.device.type == "cuda"
    optimizer = torch.optim.AdamW(optimizer_groups(unwrap(wrapped), tc.weight_decay), lr=tc.lr,
                                  betas=tuple(tc.betas), fused=fused)
    scaler = torch.amp.GradScaler(info.device.type, enabled=dtype == torch.float16)

    start = 0
    if resume:
        state = load_checkpoint(existing[-1])
        load_train_state(wrapped, optimizer, state["model"], state["optimizer"])
        if ema is not None and "ema" in state:
            ema.load_full_state(state["ema"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        if hasattr(stage, "load_extra_state"):
            stage.load_extra_state(state.get("extra", {}))
        start = int(state["step"])
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.json", (json.dumps({"stage": stage_name, **config.to_dict()}, indent=2)
                                                 + "\n").encode())
    log_path = out / "log.jsonl"
    if info.is_main and resume and log_path.exists():  # drop records past the checkpoint: the curve stays exact
        kept = [l for l in log_path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= start]
        atomic_write_bytes(log_path, ("\n".join(kept) + "\n" if kept else "").encode())

    dataset = build_dataset(config, stage_name)
    # Generated datasets are random per index already; files and caches are walked in shuffled epochs.
    shuffle = config.data.dataset == "folder" or bool(config.data.cache)
    sampler = StepSampler(len(dataset), tc.batch_size, tc.grad_accum, data_info, start, tc.steps, tc.seed, shuffle)
    loader = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=config.data.workers,
                             persistent_workers=False))
    peak = peak_flops(str(info.device), dtype) if stage_name == "dit" else 0.0
    bar = tqdm(total=tc.steps, initial=start, disable=not (progress and info.is_main), desc=f"train {stage_name}",
               dynamic_ncols=True)
    bad_steps, skipped, window = 0, 0, {"loss": 0.0, "tokens": 0, "time": 0.0, "steps": 0, "flops": 0.0}
    t_bins = torch.zeros(10), torch.zeros(10)
    stop = StopSignal()
    try:
        for step in range(start, tc.steps):
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, tc)
            # -- forward / backward over micro-batches
            step_loss, tokens, finite, logs, flops = 0.0, 0, True, {}, 0.0
            for micro in range(tc.grad_accum):
                batch = next(loader)
                skipped += batch.pop("skipped")
                if not batch["captions"]:
                    raise RuntimeError(f"step {step}: every clip of the micro-batch was unreadable")
                seed = micro_seed(tc.seed, step, micro, data_info, tc.grad_accum)
                rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
                sync = contextlib.nullcontext() if micro == tc.grad_accum - 1 or not hasattr(wrapped, "no_sync") \
                    else wrapped.no_sync()
                with sync:
                    with torch.autocast(info.device.type, dtype=dtype, enabled=dtype != torch.float32):
                        loss, logs, n = stage.batch_loss(wrapped, batch, step, rng, gen)
                    finite &= bool(torch.isfinite(loss))
                    scaler.scale(loss / tc.grad_accum).backward()
                # Under sequence parallelism a shard's loss is P x its share of the batch loss, so the
                # mean over the P ranks of a group (the logged mean) is the batch loss.
                step_loss += loss.item() / tc.grad_accum
                tokens += n
                if stage_name == "dit":
                    flops += 3 * model.estimate_flops(logs["lengths"], text_len=logs["text_len"])
                    b, c = loss_by_t_bin(logs["t"], logs["per_sample"])
                    t_bins[0].add_(torch.nan_to_num(b) * c), t_bins[1].add_(c)
            # -- update (skipped everywhere if any rank saw a non-finite loss)
            finite = mean_across(float(finite), info) == 1.0
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                bad_steps += 1
                if info.is_main:
                    print(f"step {step}: non-finite loss, step skipped ({bad_steps}/{tc.max_bad_steps})")
                if bad_steps >= tc.max_bad_steps:
                    raise RuntimeError(f"stopping: {bad_steps} consecutive non-finite losses at step {step}; "
                                       "lower train.lr, use fp32/bf16, or check the data")
                continue
            bad_steps = 0
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(unwrap(wrapped).parameters(), tc.grad_clip or float("inf")))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(wrapped, step)
            extra_logs = stage.after_step(step) if hasattr(stage, "after_step") else {}
            # -- timing and logging
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            dt = time.perf_counter() - t0
            for key, value in (("loss", step_loss), ("tokens", tokens), ("time", dt), ("steps", 1), ("flops", flops)):
                window[key] += value
            bar.update(1)
            done = step + 1
            if done % tc.log_every == 0 or done == tc.steps:
                record = _log_record(done, window, info, optimizer, peak, grad_norm, skipped, t_bins, logs, extra_logs)
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                mfu=f"{record.get('mfu', 0):.1%}")
                if info.is_main:
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                window = dict.fromkeys(window, 0.0)
                t_bins = torch.zeros(10), torch.zeros(10)
            stopping = done != tc.steps and mean_across(float(stop.name is not None), info) > 0
            if done % tc.checkpoint_every == 0 or done == tc.steps or stopping:
                _checkpoint(ckpt_dir, done, wrapped, optimizer, scaler, ema, stage, info, tc.keep_checkpoints)
            if stopping:
                raise TrainingStopped(f"stopped by {stop.name or 'another rank'} after step {done}: checkpoint "
                                      f"{ckpt_dir} written; continue with --resume")
            if tc.sample_every and done % tc.sample_every == 0 and done != tc.steps:
                _samples(stage, wrapped, ema, out / "samples" / f"step_{done:08d}", config, info)
        final = out / "final"
        model_state = ema.full_state(wrapped) if ema is not None else train_state(wrapped, optimizer)[0]
        if info.is_main:
            stage.component_dirs(final, model_state)
        _samples(stage, wrapped, ema, out / "samples" / "final", config, info)
        barrier(info)
        return final
    finally:
        stop.restore()
        bar.close()
        cleanup(info)


def _log_record(step, window, info, optimizer, peak, grad_norm, skipped, t_bins, logs, extra) -> dict:
    steps = max(window["steps"], 1)
    seconds = max(mean_across(window["time"], info), 1e-9)
    record = {"step": step, "loss": mean_across(window["loss"] / steps, info),
              "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
              "steps_per_s": steps / seconds,
              "tokens_per_s": mean_across(window["tokens"], info) * info.world_size / seconds,
              "skipped_items": skipped, "time": time.time()}
    if peak and window["flops"]:
        record["mfu"] = window["flops"] / seconds / peak
    if t_bins[1].sum() > 0:
        record["loss_by_t"] = [round(float(s / c), 5) if c else None for s, c in zip(*t_bins)]
    for key, value in {**logs, **extra}.items():
        if isinstance(value, float):
            record[key] = value
    return record


def _checkpoint(directory, step, wrapped, optimizer, scaler, ema, stage, info, keep) -> None:
    model_state, optim_state = train_state(wrapped, optimizer)  # collective under FSDP
    payload = {"model": model_state, "optimizer": optim_state, "scaler": scaler.state_dict(), "rng": rng_state(),
               "ema": ema.full_state(wrapped) if ema is not None else None,
               "extra": stage.extra_state() if hasattr(stage, "extra_state") else {}}
    if ema is None:
        payload.pop("ema")
    save_checkpoint(directory, step, payload, info, keep)
    barrier(info)


def _samples(stage, wrapped, ema, directory: Path, config: Config, info: DistInfo) -> None:
    """Sample videos (mp4) and a contact sheet (png) from the EMA weights, on rank 0."""
    state = ema.full_state(wrapped) if ema is not None else None
    if not info.is_main or not hasattr(stage, "write_samples"):
        return
    stage.write_samples(directory, state, config)
