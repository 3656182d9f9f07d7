"""Does a model follow the motion words? Per-direction displacement and per-motion pass rates.

    python benchmarks/motion_probe.py runs/long/vid-warm-b128 --checkpoint CKPT [--shift 3] [--seeds 16]
        [--noisy-expert runs/long/noisy-expert --expert-checkpoint CKPT --boundary 0.95]
    python benchmarks/motion_probe.py --ground-truth      # the world's own renders of the same prompts

Two measurements, both on fixed seeds:
1. *Directions*: for "a large red square moving left|right|up|down on a black background" (and a
   blue circle), the mean centroid displacement (dy, dx) in pixels from the first four frames to the
   last four, and how many of the seeds moved the named way by at least half of what the world's
   own renders move. A model that ignores the direction word shows the same mean for all four.
2. *Per motion* (with --heldout N): the first N items of `patchflow eval model`'s held-out row,
   grouped by the object's motion, with the fully-correct count and the presence / shape / motion
   checks per group.
The probes of 2026-12-07 and later are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from patchflow.evaluation.model_eval import FRAMES, SIZE, build_items
from patchflow.shapes.evaluate import evaluate_video
from patchflow.shapes.world import render

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frame_jumps import centroids  # noqa: E402
from learning_curve import add_model_args, model_pipeline  # noqa: E402

DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
OBJECTS = [("red", "square"), ("blue", "circle")]


def displacement(video: np.ndarray, color: str) -> np.ndarray:
    """Centroid of the last four frames minus that of the first four, (dy, dx) in pixels (NaN if absent)."""
    c = centroids(video, color)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an absent object gives NaN, not a warning
        return np.nanmean(c[-4:], 0) - np.nanmean(c[:4], 0)


def direction_table(generate, seeds: int, need_px: float) -> list[dict]:
    """One row per (object, direction): mean (dy, dx), the mean displacement along the named way, and
    the seeds that moved at least `need_px` that way."""
    rows = []
    for color, shape in OBJECTS:
        for word, (uy, ux) in DIRECTIONS.items():
            prompt = f"a large {color} {shape} moving {word} on a black background"
            moves = np.array([displacement(v, color) for v in generate(prompt, seeds)])
            along = moves[:, 0] * uy + moves[:, 1] * ux  # displacement in the named direction
            mean = np.nanmean(moves, 0)
            rows.append({"prompt": prompt, "dy": round(float(mean[0]), 1), "dx": round(float(mean[1]), 1),
                         "along": round(float(np.nanmean(along)), 1),
                         "right_way": f"{int(np.sum(along >= need_px))}/{seeds}"})
    return rows


def per_motion(pipe, count: int, steps: int, guidance: float, shift: float | None) -> dict:
    """Held-out items grouped by motion: fully correct and per-check passes."""
    stats = collections.defaultdict(collections.Counter)
    items = build_items("heldout", count)
    for i in range(0, count, 8):
        batch = items[i:i + 8]
        videos = pipe([it.prompt for it in batch], num_frames=FRAMES, height=SIZE, width=SIZE,
                      num_inference_steps=steps, guidance_scale=guidance, shift=shift,
                      seed=[it.seed for it in batch], progress=False)
        for it, video in zip(batch, videos):
            result = evaluate_video(video, it.target)
            group = stats[it.target.objects[0].motion]
            group["n"] += 1
            group["fully_correct"] += result.passed
            for check, ok in result.checks.items():
                if ok is not None:
                    group[check] += bool(ok)
                    group[check + "_n"] += 1
    return {motion: {"fully_correct": f"{c['fully_correct']}/{c['n']}",
                     **{k: f"{c[k]}/{c[k + '_n']}" for k in ("presence", "shape", "motion") if c[k + "_n"]}}
            for motion, c in sorted(stats.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--ground-truth", action="store_true", help="the world's own renders of the prompts")
    parser.add_argument("--seeds", type=int, default=16, help="videos per prompt (default 16)")
    parser.add_argument("--heldout", type=int, default=0, help="also judge this many held-out items per motion")
    args = parser.parse_args()
    if (args.run is None) == (not args.ground_truth):
        parser.error("give a run, or --ground-truth")

    truth = direction_table(lambda p, n: [render(p, SIZE, SIZE, FRAMES, seed=s) for s in range(n)], args.seeds, 0.0)
    need = float(np.mean([abs(r["along"]) for r in truth])) / 2  # half of the world's mean displacement
    if args.ground_truth:
        report({"source": "world renders", "half_true_px": round(need, 1)}, truth)
        return

    pipe = model_pipeline(args)

    def generate(prompt: str, n: int) -> list[np.ndarray]:
        return list(pipe([prompt] * n, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=args.steps,
                         guidance_scale=args.guidance, shift=args.shift, seed=list(range(n)), progress=False))

    rows = direction_table(generate, args.seeds, need)
    report({"source": str(args.checkpoint or args.run), "shift": args.shift, "half_true_px": round(need, 1),
            "noisy_expert": str(args.expert_checkpoint or args.noisy_expert) if args.noisy_expert else None}, rows)
    if args.heldout:
        print(json.dumps({"per_motion": per_motion(pipe, args.heldout, args.steps, args.guidance, args.shift)}))


def report(header: dict, rows: list[dict]) -> None:
    """One JSON line for the source, then one per prompt."""
    print(json.dumps(header))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
