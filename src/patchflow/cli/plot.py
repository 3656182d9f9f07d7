"""`patchflow plot`: the loss-vs-step plot of a training run."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from patchflow.evaluation.plot import plot_run

    path = plot_run(args.run, args.output)
    print(f"wrote {path}")
    return 0


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("plot", help="loss-vs-step plot of a training run (needs matplotlib)")
    p.add_argument("run", type=Path, help="run folder with log.jsonl")
    p.add_argument("-o", "--output", type=Path, help="PNG path (default RUN/loss.png)")
    p.set_defaults(func=run)

