"""Contact sheet of a Shapes World model on held-out prompts, each judged by the evaluator.

    python scripts/model_samples.py -o docs/shapes-world-model.png [--model DIR] [--count 16] [--seed 0]

Takes the first `--count` prompts of `patchflow eval model`'s held-out row (colour/shape/motion
combinations the model never saw together) with that row's seeds, generates them with the model's
default settings and writes one picture: a .png shows each video as a strip of 4 frames (first to
last), a .gif/.mp4/.webm plays them; each captioned with its prompt and the evaluator's verdict ("ok",
or the attributes that failed). The README's picture of the shipped model comes from here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from patchflow.data.grid import contact_sheet, video_grid
from patchflow.data.io import write_video
from patchflow.evaluation.model_eval import build_items
from patchflow.pipelines.pipeline import VideoPipeline
from patchflow.shapes.evaluate import evaluate_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True, help=".png (frame strips) or .gif/.mp4/.webm")
    parser.add_argument("--model", help="pipeline folder or training run (default: the shipped model)")
    parser.add_argument("--count", type=int, default=16, help="held-out prompts (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="the evaluation set's seed (default 0)")
    parser.add_argument("--cols", type=int, default=2, help="videos per row (default 2)")
    args = parser.parse_args()

    pipe = VideoPipeline.from_pretrained(args.model)
    items = build_items("heldout", args.count, args.seed)
    videos = pipe([it.prompt for it in items], seed=[it.seed for it in items])
    captions = []
    for video, item in zip(videos, items):
        result = evaluate_video(video, item.target)
        failed = [name for name, ok in result.checks.items() if ok is False]
        captions.append(f"{item.prompt} | {'ok' if not failed else 'failed: ' + ', '.join(failed)}")
    if args.output.suffix == ".png":
        contact_sheet(list(videos), captions, args.output, per_row=args.cols)
    else:
        grid = video_grid(list(videos), captions, cols=args.cols)
        write_video(grid, args.output, fps=pipe.defaults.get("fps", 8))
    passed = sum(c.endswith("| ok") for c in captions)
    print(f"wrote {args.output}: {passed} of {len(items)} held-out prompts fully correct")


if __name__ == "__main__":
    main()
