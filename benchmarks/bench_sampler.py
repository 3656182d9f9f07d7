"""Sampler settings by accuracy per second: steps x guidance x sampler on the shipped model.

    python benchmarks/bench_sampler.py [--model DIR] [--count 48] [--row heldout]
        [--steps 10 20 30] [--guidance 1 3 4] [--samplers euler heun]

For each setting, generates the first `--count` items of a model_eval row (the same fixed items
for every setting) in batches of 8 and reports the share fully correct and the warm wall time per
video. Prints a markdown table (for benchmarks/RESULTS.md) and one JSON line per setting.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from patchflow.evaluation.model_eval import evaluate_row
from patchflow.pipelines.pipeline import VideoPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="pipeline folder or run (default: the shipped model)")
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--row", default="heldout")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 30])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 4.0])
    parser.add_argument("--samplers", nargs="+", default=["euler"])
    args = parser.parse_args()

    pipe = VideoPipeline.from_pretrained(args.model)
    evaluate_row(pipe, args.row, count=8, steps=2, progress=False)  # warm-up: first-call costs out of the timing
    rows = []
    for sampler, steps, guidance in itertools.product(args.samplers, args.steps, args.guidance):
        pipe.defaults["sampler"] = sampler
        r = evaluate_row(pipe, args.row, count=args.count, steps=steps, guidance=guidance, progress=False)
        evals = steps * (2 if sampler == "heun" else 1) * (2 if guidance != 1.0 else 1)
        rows.append({"sampler": sampler, "steps": steps, "guidance": guidance, "model_evals": evals,
                     "all": r["all"], "shape": r.get("shape"), "motion": r.get("motion"),
                     "s_per_video": r["seconds"] / args.count, "threads": torch.get_num_threads()})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| sampler | steps | guidance | DiT passes | {args.row} fully correct | shape | motion | s / video |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['guidance']:g} | {r['model_evals']} | {100 * r['all']:.0f}% | "
              f"{100 * (r['shape'] or 0):.0f}% | {100 * (r['motion'] or 0):.0f}% | {r['s_per_video']:.2f} |")


if __name__ == "__main__":
    main()
