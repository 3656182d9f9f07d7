"""Sampler settings by accuracy per second: steps x guidance x sampler x time shift on the shipped model.

    python benchmarks/bench_sampler.py [--model DIR] [--count 48] [--row heldout]
        [--steps 10 20 30] [--guidance 1 3 4] [--samplers euler heun] [--shifts 0 3]

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
    parser.add_argument("--shifts", type=float, nargs="+", default=[0.0],
                        help="sampler time shifts (more steps at the noisy end as it grows); 0 = the model's "
                             "rule from the token count")
    args = parser.parse_args()

    pipe = VideoPipeline.from_pretrained(args.model)
    evaluate_row(pipe, args.row, count=8, steps=2, progress=False)  # warm-up: first-call costs out of the timing
    rows = []
    for sampler, steps, guidance, shift in itertools.product(args.samplers, args.steps, args.guidance, args.shifts):
        pipe.defaults["sampler"] = sampler
        pipe.flow_config.fixed_shift = shift
        r = evaluate_row(pipe, args.row, count=args.count, steps=steps, guidance=guidance, progress=False)
        evals = steps * (2 if sampler == "heun" else 1) * (2 if guidance != 1.0 else 1)
        rows.append({"sampler": sampler, "steps": steps, "guidance": guidance, "shift": shift, "model_evals": evals,
                     "all": r["all"], "presence": r.get("presence"), "shape": r.get("shape"), "motion": r.get("motion"),
                     "s_per_video": r["seconds"] / args.count, "threads": torch.get_num_threads()})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| sampler | steps | guidance | shift | DiT passes | {args.row} fully correct | presence | shape | motion "
          "| s / video |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['guidance']:g} | {r['shift'] or 'auto'} | {r['model_evals']} | "
              f"{100 * r['all']:.0f}% | {100 * (r['presence'] or 0):.0f}% | {100 * (r['shape'] or 0):.0f}% | "
              f"{100 * (r['motion'] or 0):.0f}% | {r['s_per_video']:.2f} |")


if __name__ == "__main__":
    main()
