"""Speed of the shipped model with its default settings (issue #13's targets: <= 5 s cold, <= 1 s/video warm).

    python benchmarks/bench_shipped.py [--model DIR] [--repeats 3]

1. cold: `patchflow generate PROMPT -o x.mp4` in a fresh process (python start, imports, model load,
   one 17x64x64 video with the model's default steps/guidance/sampler, .mp4 written), wall time;
2. warm: in this process, a batch of 8 held-out prompts in one call, wall time per video;
3. warm: one prompt per call.
Prints one JSON line per measurement (median of --repeats) and a markdown table.
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

import torch

from patchflow.pipelines.pipeline import VideoPipeline

PROMPTS = [
    "a large red circle moving right on a black background",
    "a small yellow triangle moving left on a white background",
    "a large cyan square shrinking on a gray background",
    "a small purple circle bouncing on a black background",
    "a large blue square standing still on a white background",
    "a small green triangle moving up on a gray background",
    "a large orange circle growing on a black background",
    "a small red square moving down on a white background",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped model)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "patchflow", "generate", PROMPTS[0], "-o", os.path.join(tmp, "x.mp4")]
        if args.model:
            cmd += ["--model", args.model]
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        rows.append({"what": "cold: new process -> 17x64x64 video -> .mp4", "seconds": statistics.median(times)})

    pipe = VideoPipeline.from_pretrained(args.model)
    pipe(PROMPTS[:2], seed=0, progress=False)  # warm-up
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        pipe(PROMPTS, seed=r, progress=False)
        times.append((time.perf_counter() - t0) / len(PROMPTS))
    rows.append({"what": f"warm: batch of {len(PROMPTS)} prompts, per video", "seconds": statistics.median(times)})
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        pipe(PROMPTS[r % len(PROMPTS)], seed=r, progress=False)
        times.append(time.perf_counter() - t0)
    rows.append({"what": "warm: one prompt per call", "seconds": statistics.median(times)})

    d = pipe.defaults
    print(f"defaults: {d['num_inference_steps']} {d['sampler']} steps, guidance {d['guidance_scale']}; "
          f"threads {torch.get_num_threads()}")
    for row in rows:
        print(json.dumps(row))
    print("\n| what | wall time |\n|---|---|")
    for row in rows:
        print(f"| {row['what']} | {row['seconds']:.2f} s |")


if __name__ == "__main__":
    main()
