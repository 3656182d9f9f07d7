"""DiT training throughput: ours vs diffusers' Wan, and packed vs padded batches.

    python benchmarks/bench_dit.py --preset S/2 --tokens 2048 --timer cpu --threads 1 --json

The same as `patchflow bench dit ...`; the logic lives in src/patchflow/evaluation/bench.py.
Results: benchmarks/RESULTS.md.
"""

import argparse

from patchflow.evaluation.bench import add_arguments, run_from_args

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run_from_args(parser.parse_args())
