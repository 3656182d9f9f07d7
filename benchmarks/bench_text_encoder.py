"""Cold-start and encode time of the default text encoder, plain-torch path vs transformers.

    python benchmarks/bench_text_encoder.py [--repeats 3]

Each measurement runs in a fresh Python process (a cold start is what `patchflow
generate` pays): import torch, load the encoder, encode a batch of 8 prompts.
"""

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from patchflow.models.text import BertTextEncoder, HFTextEncoder, minilm_path
encoder = BertTextEncoder() if sys.argv[1] == "torch" else HFTextEncoder(minilm_path())
t2 = time.perf_counter()
prompts = ["a small red circle moving right on a black background", "",
           "a large blue square standing still and a small yellow triangle bouncing on a white background",
           "green ball", "a purple triangle shrinking", "a cyan square moving up on a gray background",
           "an orange circle growing", "a red square moving down"]
tokens, mask = encoder.encode(prompts)
t3 = time.perf_counter()
warm = []
for _ in range(5):
    s = time.perf_counter(); encoder.encode(prompts); warm.append(time.perf_counter() - s)
print(json.dumps({"import_torch": t1 - t0, "load": t2 - t1, "first_encode": t3 - t2,
                  "warm_encode": sorted(warm)[2], "shape": list(tokens.shape), "threads": torch.get_num_threads()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for path in ("torch", "transformers"):
        runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True,
                                          check=True).stdout.strip().splitlines()[-1]) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("import_torch", "load", "first_encode", "warm_encode")}
        print(f"{path:>12}: import torch {med['import_torch']:.2f} s | load encoder {med['load']:.2f} s | "
              f"encode 8 prompts first {med['first_encode'] * 1000:.0f} ms, warm {med['warm_encode'] * 1000:.0f} ms "
              f"| tokens {runs[0]['shape']} | threads {runs[0]['threads']} | median of {args.repeats}")


if __name__ == "__main__":
    main()
