"""One training loop for the VAE and the DiT, from a laptop CPU to many GPUs.

    patchflow train dit --config configs/tiny.toml --out runs/tiny
    torchrun --nproc_per_node 8 -m patchflow train dit --config configs/shapes-world.toml --out runs/sw

`train` reads as its phases: setup (models, wrapping, optimiser), resume (the
last checkpoint), the loop, save. Phases of a step (nanoGPT style): data ->
stage loss (train_stages.py) per micro-batch -> backward with accumulation ->
clip, step, EMA -> log -> checkpoint / samples. Batches are indexed by (step,
micro-batch, rank), and all randomness inside a micro-batch is seeded from the
same triple, so `--resume` continues exactly and N processes equal 1 process
with N accumulation steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from patchflow.training.checkpoint import EMA, list_checkpoints, load_checkpoint, load_train_state, rng_state, \
    save_checkpoint, set_rng_state, train_state
from patchflow.training.config import Config
from patchflow.training.data import StepSampler, collate
from patchflow.training.distributed import DistInfo, barrier, cleanup, init_distributed, mean_across, unwrap, wrap_model
from patchflow.flow import loss_by_t_bin
from patchflow.hardware import peak_flops
from patchflow.training.stages import STAGES, Stage
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


# ---------------------------------------------------------------- optimiser and seeds
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
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")


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
@dataclass
class Run:
    """What the phases of `train` share: the stage, its wrapped model and optimiser, and where this process is."""

    stage: Stage
    wrapped: torch.nn.Module       # stage.model under DDP / FSDP2 (the model itself on one process)
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler   # scales the loss for fp16 only
    dtype: torch.dtype             # autocast precision (fp32: no autocast)
    info: DistInfo                 # this process
    data_info: DistInfo            # whose batches it draws: under sequence parallelism, its SP group's


def train(stage_name: str, config: Config, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train the stage `stage_name` (a key of train_stages.STAGES) per `config` into run folder `out`;
    returns `out/final`."""
    check_config(config, stage_name)
    tc, out = config.train, Path(out)
    info = init_distributed(tc.device)
    checkpoints = _checkpoints_to_resume(out / "checkpoints", resume)
    # -- setup: models, wrapping and optimiser; then the state of the last checkpoint
    run = _setup(stage_name, config, info)
    start = _resume(run, checkpoints[-1]) if resume else 0
    log_path = _open_run_folder(out, stage_name, config, info, resume, start)
    loader = _batches(run.stage.dataset(), config, run.data_info, start)
    peak = peak_flops(str(info.device), run.dtype) if run.stage.reports_mfu else 0.0
    bar = tqdm(total=tc.steps, initial=start, disable=not (progress and info.is_main), desc=f"train {stage_name}",
               dynamic_ncols=True)
    stop = StopSignal()
    try:
        # -- loop: steps, logs, checkpoints and samples, until train.steps or a stop signal
        _loop(run, config, loader, start, out, _Log(log_path, peak, bar, info), stop)
        # -- save: the final component folder(s) and samples
        return _save(run, config, out)
    finally:
        stop.restore()
        bar.close()
        cleanup(info)


def _checkpoints_to_resume(directory: Path, resume: bool) -> list[Path]:
    """The run's checkpoints; refuses to overwrite a run, or to resume one that has none."""
    existing = list_checkpoints(directory)
    if existing and not resume:
        raise ValueError(f"{directory.parent} already holds checkpoints (latest {existing[-1].name}); "
                         "pass --resume to continue it or choose another --out")
    if resume and not existing:
        raise ValueError(f"--resume: no checkpoints in {directory}")
    return existing


def _setup(stage_name: str, config: Config, info: DistInfo) -> Run:
    """The stage's models on this process's device, wrapped for DDP/FSDP, with their optimiser."""
    tc = config.train
    if tc.deterministic == "on" or (tc.deterministic == "auto" and info.device.type == "cpu"):
        # Threaded CPU reductions otherwise differ in the last bits from run to run.
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(tc.seed)  # the same seed on every rank gives identical initial weights
    random.seed(tc.seed)
    stage = STAGES[stage_name](config, info.device)
    model = stage.model.to(info.device)
    data_info = _sequence_parallel(stage, tc.sequence_parallel, info)
    stage.check_geometry()
    if tc.init_from:  # a warm start; --resume then loads its checkpoint over it
        stage.init_from(tc.init_from)
    if tc.compile:
        stage.compile()
    frozen = freeze_parameters(model, tc.freeze)
    if frozen and info.is_main:
        print(f"train.freeze: {frozen:,} parameters fixed ({', '.join(tc.freeze)})")
    wrapped = wrap_model(model, info, tc.distributed)
    ema = EMA(wrapped, tc.ema_decay) if tc.ema_decay > 0 else None
    dtype = resolve_precision(tc.precision, info.device)
    # The fused kernel (CUDA and CPU) updates every parameter in one op; the per-parameter loop
    # spent ~10 small ops on each of the DiT's ~130 tensors. Other devices keep the default.
    optimizer = torch.optim.AdamW(optimizer_groups(unwrap(wrapped), tc.weight_decay), lr=tc.lr,
                                  betas=tuple(tc.betas), fused=info.device.type in ("cuda", "cpu"))
    scaler = torch.amp.GradScaler(info.device.type, enabled=dtype == torch.float16)
    return Run(stage, wrapped, ema, optimizer, scaler, dtype, info, data_info)


def _sequence_parallel(stage: Stage, p: int, info: DistInfo) -> DistInfo:
    """For p > 1, shard the DiT's token rows over groups of p ranks; returns whose batches this process
    draws (its group's, so the p ranks of a group load the same batch)."""
    if p == 1:
        return info
    from patchflow.models.sequence_parallel import sequence_parallel_mesh

    if not stage.sequence_parallel:
        raise ValueError(f"train.sequence_parallel applies to the DiT stage only, not {stage.name!r}")
    stage.enable_sequence_parallel(sequence_parallel_mesh(p, info.device.type)["sp"].get_group())
    return DistInfo(info.rank // p, info.world_size // p, info.local_rank, info.device)


def _resume(run: Run, path: Path) -> int:
    """Load checkpoint `path` into the run (weights, EMA, optimiser, scaler, RNG, stage extras); returns its step."""
    state = load_checkpoint(path)
    load_train_state(run.wrapped, run.optimizer, state["model"], state["optimizer"])
    if run.ema is not None and "ema" in state:
        run.ema.load_full_state(state["ema"])
    run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    run.stage.load_extra_state(state.get("extra", {}))
    return int(state["step"])


def _open_run_folder(out: Path, stage_name: str, config: Config, info: DistInfo, resume: bool, start: int) -> Path:
    """Write out/config.json and return the log's path; on resume, drop the log records past the checkpoint
    so that the curve stays exact. Rank 0 only."""
    log_path = out / "log.jsonl"
    if not info.is_main:
        return log_path
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.json", (json.dumps({"stage": stage_name, **config.to_dict()}, indent=2)
                                             + "\n").encode())
    if resume and log_path.exists():
        kept = [l for l in log_path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= start]
        atomic_write_bytes(log_path, ("\n".join(kept) + "\n" if kept else "").encode())
    return log_path


def _batches(dataset, config: Config, data_info: DistInfo, start: int):
    """This process's micro-batches of `dataset` from step `start` on, in StepSampler's order."""
    tc = config.train
    # Generated datasets are random per index already; files and caches are walked in shuffled epochs.
    shuffle = config.data.dataset == "folder" or bool(config.data.cache)
    sampler = StepSampler(len(dataset), tc.batch_size, tc.grad_accum, data_info, start, tc.steps, tc.seed, shuffle)
    return iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=config.data.workers,
                           persistent_workers=False))


def _loop(run: Run, config: Config, loader, start: int, out: Path, log: _Log, stop: StopSignal) -> None:
    """Steps `start` .. train.steps - 1; raises TrainingStopped after a step in which any rank got a stop signal."""
    tc, info = config.train, run.info
    bad_steps = 0
    for step in range(start, tc.steps):
        t0 = time.perf_counter()
        for group in run.optimizer.param_groups:
            group["lr"] = lr_at(step, tc)
        # -- forward / backward over micro-batches
        loss, tokens, finite, logs, flops = _forward_backward(run, loader, step, tc, log)
        # -- update (skipped everywhere if any rank saw a non-finite loss)
        if mean_across(float(finite), info) != 1.0:
            bad_steps += 1
            _skip_step(run, step, bad_steps, tc.max_bad_steps)
            continue
        bad_steps = 0
        grad_norm, extra_logs = _update(run, step, tc.grad_clip)
        # -- timing and logging
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        log.add_step(loss, tokens, time.perf_counter() - t0, flops)
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            log.write(done, run.optimizer, grad_norm, {**logs, **extra_logs})
        # -- checkpoint and samples; a stop signal on any rank stops every rank here
        stopping = done != tc.steps and mean_across(float(stop.name is not None), info) > 0
        if done % tc.checkpoint_every == 0 or done == tc.steps or stopping:
            _checkpoint(out / "checkpoints", done, run, tc.keep_checkpoints)
        if stopping:
            raise TrainingStopped(f"stopped by {stop.name or 'another rank'} after step {done}: checkpoint "
                                  f"{out / 'checkpoints'} written; continue with --resume")
        if tc.sample_every and done % tc.sample_every == 0 and done != tc.steps:
            _samples(run, out / "samples" / f"step_{done:08d}", config)


def _forward_backward(run: Run, loader, step: int, tc, log: _Log) -> tuple[float, int, bool, dict, float]:
    """Accumulate the gradients of the step's micro-batches (DDP syncs on the last one only).

    Returns (mean loss, tokens, all losses finite on this rank, the last micro-batch's logs, training FLOPs).
    """
    step_loss, tokens, finite, logs, flops = 0.0, 0, True, {}, 0.0
    for micro in range(tc.grad_accum):
        batch = next(loader)
        log.skipped += batch.pop("skipped")
        if not batch["captions"]:
            raise RuntimeError(f"step {step}: every clip of the micro-batch was unreadable")
        seed = micro_seed(tc.seed, step, micro, run.data_info, tc.grad_accum)
        rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
        sync = contextlib.nullcontext() if micro == tc.grad_accum - 1 or not hasattr(run.wrapped, "no_sync") \
            else run.wrapped.no_sync()
        with sync:
            with torch.autocast(run.info.device.type, dtype=run.dtype, enabled=run.dtype != torch.float32):
                loss, logs, n = run.stage.batch_loss(run.wrapped, batch, step, rng, gen)
            finite &= bool(torch.isfinite(loss))
            run.scaler.scale(loss / tc.grad_accum).backward()
        # Under sequence parallelism a shard's loss is P x its share of the batch loss, so the
        # mean over the P ranks of a group (the logged mean) is the batch loss.
        step_loss += loss.item() / tc.grad_accum
        tokens += n
        flops += run.stage.step_flops(logs)
        if (by_t := run.stage.timestep_losses(logs)) is not None:
            log.add_loss_by_t(*by_t)
    return step_loss, tokens, finite, logs, flops


def _skip_step(run: Run, step: int, bad_steps: int, max_bad_steps: int) -> None:
    """Drop the step's gradients; stop after `max_bad_steps` non-finite steps in a row."""
    run.optimizer.zero_grad(set_to_none=True)
    if run.info.is_main:
        print(f"step {step}: non-finite loss, step skipped ({bad_steps}/{max_bad_steps})")
    if bad_steps >= max_bad_steps:
        raise RuntimeError(f"stopping: {bad_steps} consecutive non-finite losses at step {step}; "
                           "lower train.lr, use fp32/bf16, or check the data")


def _update(run: Run, step: int, grad_clip: float) -> tuple[float, dict]:
    """Clip, optimiser step, EMA, then the stage's own after-step work; returns (gradient norm, its logs)."""
    run.scaler.unscale_(run.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(unwrap(run.wrapped).parameters(), grad_clip or float("inf"),
                                                     foreach=True))  # multi-tensor norms: fewer tiny ops
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(run.wrapped, step)
    return grad_norm, run.stage.after_step(step)


class _Log:
    """The JSON-lines log: sums over the steps since the last record, and one record every `log_every` steps."""

    def __init__(self, path: Path, peak: float, bar: tqdm, info: DistInfo):
        self.path, self.peak, self.bar, self.info = path, peak, bar, info
        self.skipped = 0  # unreadable clips so far
        self._reset()

    def _reset(self) -> None:
        self.window = {"loss": 0.0, "tokens": 0, "time": 0.0, "steps": 0, "flops": 0.0}
        self.t_bins = torch.zeros(10), torch.zeros(10)  # loss sums and counts per timestep bin

    def add_loss_by_t(self, t: torch.Tensor, per_sample: torch.Tensor) -> None:
        b, c = loss_by_t_bin(t, per_sample)
        self.t_bins[0].add_(torch.nan_to_num(b) * c), self.t_bins[1].add_(c)

    def add_step(self, loss: float, tokens: int, seconds: float, flops: float) -> None:
        for key, value in (("loss", loss), ("tokens", tokens), ("time", seconds), ("steps", 1), ("flops", flops)):
            self.window[key] += value
        self.bar.update(1)

    def write(self, step: int, optimizer, grad_norm: float, logs: dict) -> None:
        """Append the record of the steps up to `step` (means across ranks; rank 0 writes) and start a new window."""
        w, info = self.window, self.info
        steps = max(w["steps"], 1)
        seconds = max(mean_across(w["time"], info), 1e-9)
        record = {"step": step, "loss": mean_across(w["loss"] / steps, info),
                  "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                  "steps_per_s": steps / seconds,
                  "tokens_per_s": mean_across(w["tokens"], info) * info.world_size / seconds,
                  "skipped_items": self.skipped, "time": time.time()}
        if self.peak and w["flops"]:
            record["mfu"] = w["flops"] / seconds / self.peak
        if self.t_bins[1].sum() > 0:
            record["loss_by_t"] = [round(float(s / c), 5) if c else None for s, c in zip(*self.t_bins)]
        record.update({key: value for key, value in logs.items() if isinstance(value, float)})
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}",
                             mfu=f"{record.get('mfu', 0):.1%}")
        if info.is_main:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self._reset()


def _checkpoint(directory: Path, step: int, run: Run, keep: int) -> None:
    model_state, optim_state = train_state(run.wrapped, run.optimizer)  # collective under FSDP
    payload = {"model": model_state, "optimizer": optim_state, "scaler": run.scaler.state_dict(), "rng": rng_state(),
               "ema": run.ema.full_state(run.wrapped) if run.ema is not None else None,
               "extra": run.stage.extra_state()}
    if run.ema is None:
        payload.pop("ema")
    save_checkpoint(directory, step, payload, run.info, keep)
    barrier(run.info)


def _samples(run: Run, directory: Path, config: Config) -> None:
    """Sample videos (mp4) and a contact sheet (png) from the EMA weights, on rank 0."""
    state = run.ema.full_state(run.wrapped) if run.ema is not None else None  # collective under FSDP
    if run.info.is_main:
        run.stage.write_samples(directory, state, config)


def _save(run: Run, config: Config, out: Path) -> Path:
    """The final component folder(s) from the EMA weights (else the trained ones), and final samples."""
    final = out / "final"
    model_state = run.ema.full_state(run.wrapped) if run.ema is not None else train_state(run.wrapped, run.optimizer)[0]
    if run.info.is_main:
        run.stage.save_final(final, model_state)
    _samples(run, out / "samples" / "final", config)
    barrier(run.info)
    return final
