"""`patchflow shapes`: render a Shapes World prompt (ground truth, no model), or a preview grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from patchflow.cli.common import positive_int


def run(args: argparse.Namespace) -> int:
    from patchflow.data.io import write_video

    if args.preview:
        import random

        from patchflow.shapes.captions import captions
        from patchflow.data.grid import video_grid
        from patchflow.shapes.world import render_scene, sample_scene

        rng = random.Random(args.seed)
        records = [sample_scene(rng, split="all") for _ in range(args.count)]
        videos = [render_scene(r, args.height, args.width, args.frames) for r in records]
        video = video_grid(videos, [captions(r)["plain"] for r in records])
        out = args.output or Path("shapes-preview.gif")
    else:
        if not args.prompt:
            raise SystemExit("patchflow shapes: give a PROMPT, or --preview for random clips")
        from patchflow.shapes.world import render

        video = render(args.prompt, args.height, args.width, args.frames, seed=args.seed)
        out = args.output or Path("shapes.mp4")
    path = write_video(video, out, fps=args.fps)
    print(f"wrote {path} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]})")
    return 0


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("shapes", help="render a Shapes World prompt (ground truth, no model)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog='examples:\n  patchflow shapes "a red circle moving right on a black background" -o red.mp4\n'
                              '  patchflow shapes "a large blue square growing" -o frames/\n'
                              '  patchflow shapes --preview --count 12 -o grid.gif')
    p.add_argument("prompt", nargs="?", help="plain-form prompt: [a] [small|large] COLOUR SHAPE MOTION "
                                            "[and ...] [on a BACKGROUND background]")
    p.add_argument("-o", "--output", type=Path, help="output .mp4/.webm/.gif/.png or a folder/ for PNG frames")
    p.add_argument("--preview", action="store_true", help="a grid of random captioned clips instead of one prompt")
    p.add_argument("--count", type=positive_int, default=9, help="clips in the preview grid (default 9)")
    p.add_argument("--height", type=int, default=64, help="pixels, 16-512 (default 64)")
    p.add_argument("--width", type=int, default=64, help="pixels, 16-512 (default 64)")
    p.add_argument("--frames", type=int, default=17, help="1-256 frames at 8 fps (default 17)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of the written file (default 8)")
    p.add_argument("--seed", type=int, default=0, help="draws size/background/position left open (default 0)")
    p.set_defaults(func=run)

