"""`patchflow bench dit`: speed benchmarks (results: benchmarks/RESULTS.md)."""

from __future__ import annotations

import argparse


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("bench", help="speed benchmarks (results: benchmarks/RESULTS.md)")
    bsub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    b = bsub.add_parser("dit", help="DiT train step: ours vs diffusers Wan, packed vs padded, MFU",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  patchflow bench dit --preset S/2 --tokens 2048 --json\n"
                               "  patchflow bench dit --preset L/2 --tokens 16384 --device cuda --dtype bfloat16")
    if argv is None or "bench" in argv:  # bench's flags import torch: only when asked for
        from patchflow.evaluation import bench

        bench.add_arguments(b)
        b.set_defaults(func=lambda args: (bench.run_from_args(args), 0)[1])

