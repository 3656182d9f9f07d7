"""Draw the README's picture: generated (not rendered) videos of the shipped model, with their prompts.

    python docs/make_samples.py [--model DIR] [-o docs/samples.gif] [--seed 0]

Text-to-video on held-out prompts (colour/shape/motion combinations the model never saw together,
one of them paraphrased), and the conditioning tasks (the given frames come from the Shapes World renderer).
Each cell's caption says what was asked and whether `patchflow eval shapes` passes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from patchflow.data.grid import video_grid
from patchflow.data.io import write_video
from patchflow.shapes.world import render
from patchflow.shapes.evaluate import evaluate_video
from patchflow.pipelines.pipeline import VideoPipeline
from patchflow.pipelines.prompts import expand_prompt

TEXT = [  # held-out colour/shape/motion combinations, the last one as a paraphrase
    "a large red circle moving right on a black background",
    "a small yellow triangle moving left on a white background",
    "a large cyan square shrinking on a gray background",
    "a small purple circle bouncing on a black background",
    "blue box, not moving, white backdrop",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/samples.gif"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pipe = VideoPipeline.from_pretrained(args.model)

    videos, captions = [], []

    def judged(video, prompt: str, label: str) -> None:
        ok = evaluate_video(video, expand_prompt(prompt)).passed
        videos.append(video)
        captions.append(f"{label}{prompt} [{'pass' if ok else 'FAIL'}]")

    for prompt in TEXT:
        judged(pipe(prompt, seed=args.seed, progress=False), prompt, "")
    clip = render("a small green square moving left on a gray background", 64, 64, 17, seed=3)
    prompt = "a small green square moving left on a gray background"
    judged(pipe(prompt, image=clip[0], seed=args.seed, progress=False), prompt, "image-to-video: ")
    judged(pipe(prompt, video=clip[:9], extend="forward", num_frames=17, seed=args.seed, progress=False), prompt,
           "extend 9 frames: ")
    other = render("a large orange circle standing still on a white background", 64, 64, 17, seed=4)
    prompt = "a large orange circle standing still on a white background"
    judged(pipe(prompt, video=other[:5], end_video=other[-4:], num_frames=17, seed=args.seed, progress=False),
           prompt, "connect: ")
    grid = video_grid(videos, captions, cols=4)
    path = write_video(grid, args.output, fps=8)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
