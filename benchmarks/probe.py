"""One rung of the Shapes World recipe ladder: train a short run, judge it, record it.

    python benchmarks/probe.py --name mini --steps 2000
    python benchmarks/probe.py --name w128 --steps 3000 --set dit.hidden_size=128
    python benchmarks/probe.py --table            # every recorded probe, as a markdown table

A probe is: configs/shapes-world.toml on a latent cache made once per VAE (`--cache`, built with
`--items` clips of the shipped general VAE when missing), the overrides that name the lever
(`--set`, as for `patchflow train`), `--steps` steps of training (the cosine schedule runs to its
end), then the held-out row of `patchflow eval model` (`--count` prompts, fixed seed 0, `--sample-steps`
Euler steps, guidance `--guidance`) on the EMA weights. It prints and appends to
runs/probes/probes.jsonl one record: the lever, steps, training minutes, the share fully correct
and per attribute, the training loss per timestep bin over the last 10% of steps, and where the
contact sheets are (OUT/heldout.png, OUT/heldout-failures.png).
Results: benchmarks/RESULTS.md, "The Shapes World probe ladder".
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAE = ROOT / "src/patchflow/pretrained/vae-general"
RECORDS = ROOT / "runs/probes/probes.jsonl"


def loss_by_t(log: list[dict], share: float = 0.1) -> list[float | None]:
    """The training loss per timestep bin (10 bins of t), averaged over the records of the last `share` of steps."""
    last = log[-1]["step"]
    rows = [r["loss_by_t"] for r in log if "loss_by_t" in r and r["step"] > last * (1 - share)]
    bins = []
    for k in range(10):
        values = [r[k] for r in rows if r[k] is not None]
        bins.append(round(sum(values) / len(values), 4) if values else None)
    return bins


def run_probe(args) -> dict:
    from patchflow.training.cache import build_cache
    from patchflow.training.config import load_config
    from patchflow.evaluation.model_eval import evaluate_row
    from patchflow.pipelines.pipeline import VideoPipeline
    from patchflow.training.loop import train

    base = [f'vae.path="{args.vae}"']
    if not (args.cache / "meta.json").is_file():
        print(f"building a {args.items}-clip cache in {args.cache} ...", flush=True)
        build_cache(load_config(args.config, base), args.cache, args.items)
    out = ROOT / "runs/probes" / args.name
    if out.exists():
        if not args.replace:
            raise SystemExit(f"{out} exists: choose another --name or pass --replace")
        shutil.rmtree(out)
    sets = [*base, f'data.cache="{args.cache}"', f"train.steps={args.steps}", "train.log_every=50",
            f"train.checkpoint_every={args.checkpoint_every}", "train.sample_steps=20", *args.sets]
    config = load_config(args.config, sets)
    start = time.perf_counter()
    train("dit", config, out / "run", progress=not args.quiet)
    minutes = (time.perf_counter() - start) / 60
    log = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]

    pipe = VideoPipeline.from_pretrained(out / "run")
    if args.shift is not None:
        pipe.defaults["shift"] = args.shift
    start = time.perf_counter()
    result = evaluate_row(pipe, "heldout", count=args.count, seed=0, steps=args.sample_steps,
                          guidance=args.guidance, progress=not args.quiet, samples=out, frames=args.frames)
    record = {"name": args.name, "sets": args.sets, "steps": args.steps, "train_minutes": round(minutes, 1),
              "eval_minutes": round((time.perf_counter() - start) / 60, 1), "final_loss": round(log[-1]["loss"], 4),
              "count": args.count, "sample_steps": args.sample_steps, "guidance": args.guidance, "frames": args.frames,
              "shift": args.shift,
              **{k: round(v, 3) for k, v in result.items() if k not in ("count", "seconds", "by_object")},
              "loss_by_t": loss_by_t(log), "sheets": str(out.relative_to(ROOT)), "date": time.strftime("%Y-%m-%d")}
    RECORDS.parent.mkdir(parents=True, exist_ok=True)
    with RECORDS.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def table(path: Path) -> str:
    """The recorded probes as a markdown table (shares in %)."""
    from patchflow.shapes.evaluate import ATTRIBUTES

    header = ["probe", "lever", "steps", "train min", "loss", "all", *ATTRIBUTES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        cells = [r["name"], " ".join(r["sets"]) or "(recipe)", str(r["steps"]), str(r["train_minutes"]),
                 str(r["final_loss"]), *(f"{100 * r[k]:.0f}%" if k in r else "-" for k in ("all", *ATTRIBUTES))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="the probe's name: runs/probes/NAME holds its run and sheets")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="the lever: a config override, as for `patchflow train` (repeatable)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/shapes-world.toml")
    parser.add_argument("--cache", type=Path, default=ROOT / "cache/sw15k", help="latent cache (built once)")
    parser.add_argument("--vae", type=Path, default=VAE, help="the VAE folder the cache is made with "
                        "(default: the shipped general VAE)")
    parser.add_argument("--items", type=int, default=15000, help="clips in a new cache (default 15000)")
    parser.add_argument("--count", type=int, default=48, help="held-out prompts judged (default 48)")
    parser.add_argument("--sample-steps", type=int, default=20, help="Euler steps per video (default 20)")
    parser.add_argument("--guidance", type=float, default=4.0, help="guidance scale (default 4)")
    parser.add_argument("--shift", type=float, default=None,
                        help="the sampler's time shift for the judged videos (default: the model's; 3 passes more)")
    parser.add_argument("--frames", type=int, default=17, help="judged video length (1: images, for a model "
                        "trained on images; default 17)")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    parser.add_argument("--replace", action="store_true", help="replace runs/probes/NAME if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--table", action="store_true", help="print the recorded probes and exit")
    args = parser.parse_args()
    if args.table:
        print(table(RECORDS) if RECORDS.is_file() else f"no probes recorded in {RECORDS}")
        return
    if not args.name:
        parser.error("--name is required (or --table)")
    if args.steps < 1 or args.count < 1 or args.sample_steps < 1:
        parser.error("--steps, --count and --sample-steps must be >= 1")
    print(json.dumps(run_probe(args)))


if __name__ == "__main__":
    main()
