"""The DiT training loop's speed: the real `train()` path beside the model alone, old code beside new.

    python benchmarks/bench_loop.py                          # both shapes, this checkout
    python benchmarks/bench_loop.py --baseline 9846885       # and the code of that commit, side by side
    python benchmarks/bench_loop.py --shape recipe --profile  # with the top ops of the stage step
    python benchmarks/bench_loop.py --set train.compile=true  # any config override, for every version
    python benchmarks/bench_loop.py --vae --steps 3 --warmup 1  # the VAE stage's step and its top ops

Shapes (the Shapes World recipe, configs/shapes-world.toml, on latents of the shipped general VAE):
    recipe   patch 1x2x2: 64x64x17 clips are 80 tokens, batch 32 (mixed sizes/lengths packed)
    patch1   patch 1x1x1: the same clips are 320 tokens, batch 8
For each shape and code version it reports three times per step:
    loop    `patchflow train dit` for `--steps` steps after `--warmup` (the log's steps/s): data
            loading, packing, task masks, forward, backward, clipping, AdamW, EMA, logging;
    stage   on one fixed batch of that run: the stage's loss and backward (packing, task masks,
            text lookup, the DiT; no data loading, no update);
    model   the DiT's forward and backward alone on that batch's packed inputs.
Every measurement runs in its own process (`--threads` OpenMP threads); with `--baseline REV` the two
versions alternate `--repeats` times, so a busy machine slows both alike, and the medians are shown.
The small cache (`--items` clips) is built once into `--cache` by this checkout's `patchflow cache`.
Results: benchmarks/RESULTS.md, "The training loop".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAE = ROOT / "src/patchflow/pretrained/vae-general"
SHAPES = {  # name -> config overrides on configs/shapes-world.toml
    "recipe": ["dit.patch_size=[1, 2, 2]", "train.batch_size=32"],
    "patch1": ["dit.patch_size=[1, 1, 1]", "train.batch_size=8"],
}


def base_sets(cache: Path | None) -> list[str]:
    """Overrides of every measurement: the shipped VAE, the cache (None: while building it), no real samples."""
    return [f'vae.path="{VAE}"', *([f'data.cache="{cache}"'] if cache else []), "train.sample_prompts=[\"a red circle\"]",
            "train.sample_steps=1", "train.checkpoint_every=100000"]


def ensure_cache(cache: Path, items: int) -> None:
    if (cache / "meta.json").is_file():
        return
    from patchflow.training.cache import build_cache
    from patchflow.training.config import load_config

    print(f"building a {items}-clip cache in {cache} ...", flush=True)
    build_cache(load_config(ROOT / "configs/shapes-world.toml", base_sets(None)), cache, items, progress=False)


# ---------------------------------------------------------------- one measurement (child process)
def loop_api():
    """(load_config, init_distributed, train, setup, first_batch) of the patchflow on sys.path: today's
    layout, or the flat one of older commits (what --baseline runs)."""
    try:
        from patchflow.training.config import load_config
        from patchflow.training.distributed import init_distributed
        from patchflow.training.loop import _batches, _setup, train

        def first_batch(run, config, stage):
            return next(_batches(run.stage.dataset(), config, run.data_info, 0))
    except ImportError:
        from patchflow.config import load_config
        from patchflow.distributed import init_distributed
        from patchflow.train import _batches, _setup, train

        def first_batch(run, config, stage):
            return next(_batches(config, stage, run.data_info, 0))
    return load_config, init_distributed, train, _setup, first_batch


def measure(shape: str, cache: Path, steps: int, warmup: int, profile: bool, sets: list[str]) -> dict:
    """Time the real loop, then the model step on one batch; runs inside the patchflow on sys.path."""
    import torch

    import patchflow

    load_config, init_distributed, train, _setup, first_batch = loop_api()

    sets = [*base_sets(cache), *SHAPES[shape], f"train.steps={warmup + steps}", f"train.log_every={warmup}",
            "train.warmup=10", *sets]
    config = load_config(ROOT / "configs/shapes-world.toml", sets)
    with tempfile.TemporaryDirectory() as out:
        train("dit", config, out, progress=False)
        log = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    timed = [r for r in log if r["step"] > warmup]  # the first window pays for warm-up
    loop_s = sum((r["step"] - p["step"]) / r["steps_per_s"] for p, r in zip(log, log[1:]) if r in timed) / steps

    # On one fixed batch of the same run: the stage's step (packing, task masks, text lookup, loss,
    # backward; no data loading, no update) and the DiT's forward + backward alone on its inputs.
    run = _setup("dit", config, init_distributed("cpu"))
    batch = first_batch(run, config, "dit")
    batch.pop("skipped")
    autocast = torch.autocast("cpu", dtype=run.dtype, enabled=run.dtype != torch.float32)
    inputs = []

    def capture(module, args, output) -> None:
        inputs.append(args)

    def stage_step() -> None:
        import random

        with autocast:
            loss, _, _ = run.stage.batch_loss(run.wrapped, batch, 0, random.Random(0), torch.Generator().manual_seed(0))
        loss.backward()
        run.optimizer.zero_grad(set_to_none=True)

    def model_step() -> None:
        with autocast:
            out = run.wrapped(*inputs[0])
        out.float().square().mean().backward()
        run.optimizer.zero_grad(set_to_none=True)

    hook = run.wrapped.register_forward_hook(capture)
    stage_step()
    hook.remove()
    timings = {}
    for name, fn in (("stage_s", stage_step), ("model_s", model_step)):
        for _ in range(warmup // 2 + 1):
            fn()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        timings[name] = (time.perf_counter() - t0) / steps
    result = {"patchflow": str(Path(patchflow.__file__).parent), "shape": shape, "loop_s": loop_s, **timings,
              "losses": [round(r["loss"], 5) for r in log], "threads": torch.get_num_threads()}
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                stage_step()
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in rows)
        result["top_ops"] = [(e.key, round(100 * e.self_cpu_time_total / total, 1), e.count // 5) for e in rows[:12]]
    return result


def measure_vae(steps: int, warmup: int) -> dict:
    """The VAE stage's step (configs/vae-general.toml on Shapes World clips, no data loading in the
    timing): loss + backward, then its top ops. Issue #21 asks whether it has the DiT's small-op gap."""
    import random

    import torch
    from torch.profiler import profile as torch_profile

    load_config, init_distributed, _, _setup, first_batch = loop_api()
    config = load_config(ROOT / "configs/vae-general.toml", ['data.dataset="shapes"', "data.frames=[17]"])
    run = _setup("vae", config, init_distributed("cpu"))
    batch = first_batch(run, config, "vae")
    batch.pop("skipped")

    def stage_step() -> None:
        loss, _, _ = run.stage.batch_loss(run.wrapped, batch, 0, random.Random(0), torch.Generator().manual_seed(0))
        loss.backward()
        run.optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        stage_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        stage_step()
    seconds = (time.perf_counter() - t0) / steps
    with torch_profile() as prof:
        for _ in range(2):
            stage_step()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    return {"stage_s": seconds, "threads": torch.get_num_threads(),
            "top_ops": [(e.key, round(100 * e.self_cpu_time_total / total, 1), e.count // 2) for e in rows[:12]]}


# ---------------------------------------------------------------- the parent: versions side by side
def run_child(src: Path, args, shape: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--child", shape, "--cache", str(args.cache), "--steps", str(args.steps),
           "--warmup", str(args.warmup)] + (["--profile"] if args.profile else []) + \
        [f"--set={item}" for item in args.sets]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"measurement of {shape} with {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def checkout(rev: str, into: Path) -> Path:
    """`git archive REV` unpacked into `into`; returns its src folder."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement (default 30)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per version and shape (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads per measurement (default 2)")
    parser.add_argument("--baseline", metavar="REV", help="also measure the code of this git revision")
    parser.add_argument("--cache", type=Path, default=ROOT / "cache/bench-loop", help="small latent cache (built once)")
    parser.add_argument("--items", type=int, default=512, help="clips in a new cache (default 512)")
    parser.add_argument("--profile", action="store_true", help="print the model step's top ops")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every measurement, e.g. train.compile=true")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    parser.add_argument("--vae", action="store_true", help="instead: the VAE stage's step and its top ops")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--steps, --warmup, --repeats and --threads must be >= 1")
    if args.vae:
        result = measure_vae(args.steps, args.warmup)
        print(f"VAE stage (configs/vae-general.toml, batch 8 of 17x64x64, fp32), {result['threads']} threads: "
              f"{result['stage_s']:.2f} s/step")
        for op, share, calls in result["top_ops"]:
            print(f"  {share:5.1f}%  {calls:6d}/step  {op}")
        return
    if args.child:
        print(json.dumps(measure(args.child, args.cache, args.steps, args.warmup, args.profile, args.sets)))
        return
    ensure_cache(args.cache, args.items)
    shapes = list(SHAPES) if args.shape == "all" else [args.shape]
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"this checkout": ROOT / "src"}
        if args.baseline:
            versions = {args.baseline: checkout(args.baseline, Path(tmp)), **versions}
        results = {shape: {name: [] for name in versions} for shape in shapes}
        for shape in shapes:
            for _ in range(args.repeats):
                for name, src in versions.items():  # alternate, so both see the same machine
                    results[shape][name].append(run_child(src, args, shape))
    report(results, args)


def report(results: dict, args) -> None:
    summary = {shape: {name: {**{key: statistics.median(r[key] for r in runs) for key in ("loop_s", "stage_s", "model_s")},
                              "losses": runs[0]["losses"], "top_ops": runs[0].get("top_ops")}
                       for name, runs in by_version.items()} for shape, by_version in results.items()}
    if args.json:
        print(json.dumps({"threads": args.threads, "steps": args.steps, "results": summary}, indent=1))
        return
    print(f"{args.threads} threads, {args.steps} timed steps after {args.warmup}, median of {args.repeats}"
          + (f"; overrides {' '.join(args.sets)}" if args.sets else ""))
    print(f"{'shape':8} {'code':16} {'loop s/step':>12} {'steps/min':>10} {'stage s':>8} {'model s':>8}  losses (log windows)")
    for shape, by_version in summary.items():
        first = None
        for name, s in by_version.items():
            first = first or s
            speedup = f" ({first['loop_s'] / s['loop_s']:.2f}x)" if s is not first else ""
            print(f"{shape:8} {name:16} {s['loop_s']:12.3f} {60 / s['loop_s']:10.0f} {s['stage_s']:8.3f} {s['model_s']:8.3f}  "
                  f"{s['losses']}{speedup}")
            for op, share, calls in s["top_ops"] or []:
                print(f"{'':26}{share:5.1f}%  {calls:6d}/step  {op}")


if __name__ == "__main__":
    main()
