"""`patchflow data fetch|list`: real footage for the general VAE."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from patchflow.data import footage

    if args.action == "fetch":
        folder = footage.fetch_opencv_media(args.dest, index=args.index, progress=not args.quiet)
        size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
        print(f"{folder}: {len(footage.OPENCV_CLIPS)} clips, {len(footage.OPENCV_PHOTOS)} photos, {size:.0f} MB")
        return 0
    print(json.dumps(footage.describe_footage(), indent=2))
    return 0


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("data", help="real footage for the general VAE: fetch OpenCV's samples from PyPI, list sources",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  patchflow data fetch      # once: 83 MB download, keeps 19 MB in "
                              "~/.cache/patchflow ($PATCHFLOW_DATA)\n"
                              "  patchflow data list       # training and held-out clips and photos found here\n\n"
                              "Sources and licences: docs/data.md.")
    p.add_argument("action", choices=("fetch", "list"), help="fetch: download OpenCV's sample clips and photos; "
                                                            "list: what training would use")
    p.add_argument("--dest", type=Path, help="fetch into this folder instead (training looks only in the default)")
    p.add_argument("--index", help="PEP 503 simple index (default $PIP_INDEX_URL or https://pypi.org/simple)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

