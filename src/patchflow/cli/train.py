"""`patchflow train vae|dit`: train a model from a config (the loop: training/loop.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from patchflow.training.config import load_config
    from patchflow.training.loop import TrainingStopped, train

    config = load_config(args.config, args.set or [])
    try:
        final = train(args.stage, config, args.out, resume=args.resume, progress=not args.quiet)
    except TrainingStopped as e:  # SIGTERM / Ctrl-C: the last step is checkpointed
        print(e, file=sys.stderr)
        return 75  # EX_TEMPFAIL: continue later with --resume
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {final} (log: {Path(args.out) / 'log.jsonl'})")
    return 0


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("train", help="train the VAE or the DiT from a config",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  patchflow train dit --config configs/tiny.toml --out runs/tiny\n"
                              "  patchflow train dit --config configs/tiny.toml --out runs/tiny --resume\n"
                              "  patchflow train vae --config configs/vae-general.toml --out runs/vae "
                              "--set train.steps=5000\n"
                              "  torchrun --standalone --nproc_per_node 2 -m patchflow train dit "
                              "--config configs/tiny.toml --out runs/ddp\n\n"
                              "SIGTERM or Ctrl-C stops after the current step with a checkpoint (exit code 75);\n"
                              "--resume continues exactly where it stopped; the run's own config.json serves\n"
                              "when the original command line is lost:\n"
                              "  patchflow train dit --config runs/tiny/config.json --out runs/tiny --resume")
    p.add_argument("stage", choices=("vae", "dit"), help="which model to train")
    p.add_argument("--config", type=Path, help="TOML file: a diff of the defaults in training/config.py; or a run's config.json")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one field, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="run folder: config, log, checkpoints, samples, final/")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

