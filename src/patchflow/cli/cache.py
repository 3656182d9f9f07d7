"""`patchflow cache`: precompute VAE latents and text states for DiT training (training/cache.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from patchflow.cli.common import positive_int


def run(args: argparse.Namespace) -> int:
    from patchflow.training.cache import build_cache
    from patchflow.training.config import load_config

    config = load_config(args.config, args.set or [])
    out = build_cache(config, args.out, args.items, progress=not args.quiet)
    print(f"cached {args.items} items in {out}; train with --set data.cache=\"{out}\"")
    return 0


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("cache", help="precompute VAE latents and text states of a dataset for DiT training",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  patchflow cache --config configs/shapes-world.toml --out cache/sw --items 20000\n"
                              "  patchflow train dit --config configs/shapes-world.toml --set data.cache=\"cache/sw\" "
                              "--out runs/sw")
    p.add_argument("--config", type=Path, help="the training config whose [data], [vae] and [text] to cache")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one field (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="cache folder")
    p.add_argument("--items", type=positive_int, required=True, help="how many dataset items to encode")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

