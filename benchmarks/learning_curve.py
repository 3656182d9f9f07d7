"""Learning curve of a DiT run: held-out accuracy of each saved checkpoint against wall-clock and steps.

    python benchmarks/learning_curve.py runs/shapes-world [--count 48] [--steps 20] [--rows heldout train] [--every 500]
    python benchmarks/learning_curve.py runs/long/img-general-b128 --frames 1 --every 1000   # a text-to-image run
    python benchmarks/learning_curve.py runs/long/vid-warm-b128 --every 1000 --shift 3      # another sampler shift

Each checkpoint's EMA weights go into the run's pipeline (its final/, or for a run still going or
stopped, one built from its config.json: same VAE and text encoder) and are judged by `patchflow.evaluation.model_eval` on the first `--count` items of each row (the same fixed items at
every checkpoint). Minutes are wall-clock from the run's first logged step, read from log.jsonl, plus
the time of that first log window. Writes RUN/learning_curve.json and, with matplotlib, the plot
docs/learning-curve.png (or --plot PATH).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from patchflow.training.checkpoint import list_checkpoints, load_checkpoint
from patchflow.evaluation.model_eval import evaluate_model
from patchflow.pipelines.pipeline import VideoPipeline


def step_minutes(run: Path) -> dict[int, float]:
    """Logged step -> minutes since the run started (first record's time minus its window)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line]
    first = records[0]
    start = first["time"] - first["step"] / first["steps_per_s"]
    return {r["step"]: (r["time"] - start) / 60 for r in records}


def run_pipeline(run: Path, checkpoint: Path | None = None) -> VideoPipeline:
    """The run's final pipeline, or one built from its config.json (a run that has not finished);
    with `checkpoint`, that checkpoint's EMA weights in it."""
    if (run / "final" / "model_index.json").is_file():
        pipe = VideoPipeline.from_pretrained(run)
    else:
        from patchflow.training.config import config_from_data
        from patchflow.training.stages import DiTStage

        saved = json.loads((run / "config.json").read_text())
        if saved.pop("stage", None) != "dit":
            raise SystemExit(f"{run} is not a DiT run")
        stage = DiTStage(config_from_data(saved), torch.device("cpu"))
        pipe = stage.pipeline(stage.model.state_dict())
    if checkpoint is not None:
        pipe.transformer.load_state_dict({k: v.float() for k, v in load_checkpoint(checkpoint)["ema"].items()})
    return pipe


def add_run_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The run to judge and, optionally, one of its checkpoints (see run_pipeline)."""
    parser.add_argument("run", nargs=None if required else "?", type=Path, help="a DiT run or pipeline folder")
    parser.add_argument("--checkpoint", type=Path, help="judge this checkpoint's EMA weights instead of final/")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The arguments of a probe that judges one model: the run, a checkpoint of it, and the sampler."""
    add_run_args(parser, required=False)  # a probe may judge the ground truth instead
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    parser.add_argument("--guidance", type=float, default=4.0, help="guidance scale (default 4)")
    parser.add_argument("--shift", type=float, default=None, help="sampler time shift (default: the model's)")
    parser.add_argument("--noisy-expert", type=Path, help="a DiT run that takes the sampler steps at t >= --boundary")
    parser.add_argument("--expert-checkpoint", type=Path, help="that run's checkpoint (default: its final/)")
    parser.add_argument("--boundary", type=float, default=0.95, help="the noisy-end expert's boundary (default 0.95)")


def model_pipeline(args: argparse.Namespace) -> VideoPipeline:
    """The pipeline `add_model_args` names: the run (or its checkpoint), with its noisy-end expert if given."""
    pipe = run_pipeline(args.run, args.checkpoint)
    if args.noisy_expert is not None:
        pipe.with_noisy_expert(run_pipeline(args.noisy_expert, args.expert_checkpoint).transformer.eval(), args.boundary)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--count", type=int, default=48, help="videos per row and checkpoint (default 48)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--rows", nargs="+", default=["heldout"])
    parser.add_argument("--every", type=int, default=1, help="only checkpoints whose step is a multiple of this")
    parser.add_argument("--plot", type=Path, default=Path("docs/learning-curve.png"))
    parser.add_argument("--frames", type=int, default=17, help="judged length (1: a text-to-image run; default 17)")
    parser.add_argument("--shift", type=float, default=None,
                        help="the sampler's time shift (default: the model's rule; its points are kept apart)")
    args = parser.parse_args()

    pipe = run_pipeline(args.run)
    if args.shift:
        pipe.flow_config.fixed_shift = args.shift
    minutes = step_minutes(args.run)
    out_path = args.run / "learning_curve.json"
    curve = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for path in list_checkpoints(args.run / "checkpoints"):
        state = load_checkpoint(path)
        step = int(state["step"])
        key = str(step) if not args.shift else f"{step}@shift{args.shift:g}"
        if key in curve or step % args.every:
            continue
        pipe.transformer.load_state_dict({k: v.float() for k, v in state["ema"].items()})
        rows = evaluate_model(pipe, rows=args.rows, count=args.count, steps=args.steps, progress=False,
                              frames=args.frames)
        curve[key] = {"step": step, "minutes": round(minutes.get(step, float("nan")), 2), "shift": args.shift,
                      **{row: {k: v for k, v in r.items() if k != "seconds"} for row, r in rows.items()}}
        print(json.dumps(curve[key]), flush=True)
        out_path.write_text(json.dumps(curve, indent=1) + "\n")
        del state
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    points = sorted((p for p in curve.values() if p.get("shift") == args.shift), key=lambda p: p["step"])

    def draw(ax):
        for row in args.rows:
            ax.plot([p["minutes"] for p in points], [100 * p[row]["all"] for p in points], "o-",
                    label=f"{row}: fully correct")
        ax.set_ylim(0, 100)

    save_curve_plot(points, draw, "DiT", "% of videos", args.plot)


def save_curve_plot(points: list[dict], draw, what: str, ylabel: str, path: Path) -> None:
    """A learning-curve plot: `draw(ax)` adds the series; x = the points' "minutes", a top axis of
    their "step"s. Needs matplotlib (says so and returns without it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot (pip install 'patchflow[plot]')")
        return
    fig, ax = plt.subplots(figsize=(6, 3.6))
    draw(ax)
    ax.set_xlabel(f"wall-clock minutes of {what} training (2-core CPU)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    top = ax.secondary_xaxis("top", functions=(lambda m: m, lambda m: m))
    top.set_xticks([p["minutes"] for p in points][::2], [str(p["step"]) for p in points][::2], fontsize=7)
    top.set_xlabel("optimizer step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")

if __name__ == "__main__":
    main()
