"""Does a model read each word of the caption? Its loss with the true caption against one word swapped.

    python benchmarks/word_reading.py runs/long/vid-warm-b128 [--checkpoint CKPT] [--clips 32] [--given-first]

The world renders `--clips` one-object clips (large objects on black, translations and the other
motions), the pipeline's VAE encodes them, and the DiT predicts the velocity at several noise levels
t (fixed noise) under four captions: the true one, and the true one with the colour, the shape or the
motion word swapped for another (a translation's direction for the opposite one). The table is the
flow loss per caption and t, and the gap each swap opens (swapped - true, in % of the true loss).
A model that reads a word pays for the wrong word at some t; a gap near 0 for a word means the model
draws the same thing whatever that word says. With --given-first the first latent frame is given
clean (image-to-video): the layout is known, so the direction word decides what follows. Sampling-free
and fixed-seed, so two checkpoints compare directly (about a minute on one core). Probes of 2026-12-07 in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

from patchflow.flow import interpolate, velocity_target
from patchflow.models.patches import pad_batch
from patchflow.shapes.world import render

sys.path.insert(0, str(Path(__file__).resolve().parent))
COLORS = ["red", "green", "blue", "yellow"]
SHAPES = ["square", "circle", "triangle"]
OPPOSITE = {"moving left": "moving right", "moving right": "moving left", "moving up": "moving down",
            "moving down": "moving up", "growing": "shrinking", "shrinking": "growing",
            "bouncing": "standing still", "standing still": "bouncing"}
TIMES = (0.3, 0.6, 0.8, 0.9, 0.97)


def captions(count: int, seed: int = 0) -> list[dict[str, str]]:
    """`count` (true, colour-swapped, shape-swapped, motion-swapped) caption sets, half of them translations."""
    rng = random.Random(seed)
    translations = [m for m in OPPOSITE if m.startswith("moving")]
    others = [m for m in OPPOSITE if not m.startswith("moving")]
    out = []
    for i in range(count):
        color, shape = rng.choice(COLORS), rng.choice(SHAPES)
        motion = rng.choice(translations if i % 2 == 0 else others)

        def caption(c: str = color, s: str = shape, m: str = motion) -> str:
            return f"a large {c} {s} {m} on a black background"
        out.append({"motion_word": motion, "translation": motion.startswith("moving"), "true": caption(),
                    "colour": caption(c=rng.choice([c for c in COLORS if c != color])),
                    "shape": caption(s=rng.choice([s for s in SHAPES if s != shape])),
                    "motion": caption(m=OPPOSITE[motion])})
    return out


@torch.no_grad()
def losses(pipe, sets: list[dict], frames: int, size: int, seed: int, given_first: bool = False
           ) -> dict[str, np.ndarray]:
    """Per caption kind: the flow loss [len(TIMES), clips] of each clip at each t.

    given_first: the first latent frame is a clean condition (image-to-video), out of the loss.
    """
    clips = np.stack([render(s["true"], size, size, frames, seed=seed + i) for i, s in enumerate(sets)])
    latents = pipe.encode_video(clips)  # (B, C, T', H', W')
    first = torch.zeros(latents.shape[2], dtype=torch.bool)
    first[0] = given_first
    packed = pad_batch(list(latents), tuple(pipe.transformer.config.patch_size), cond_frames=[first] * len(sets))
    x0 = packed.tokens  # (B, S, D): one clip per row
    valid = ((packed.sample_ids >= 0) & ~packed.cond_mask).float()  # (B, S): generated tokens
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    model = pipe._model_fn(packed, len(sets))
    texts = {kind: pipe.encode_prompt([s[kind] for s in sets]) for kind in ("true", "colour", "shape", "motion")}
    out = {kind: np.zeros((len(TIMES), len(sets))) for kind in texts}
    for i, t in enumerate(TIMES):
        xt = torch.where(packed.cond_mask[..., None], x0, interpolate(x0, noise, t))  # given tokens stay clean
        target = velocity_target(x0, noise)
        t_in = valid * t  # per-token t, as the pipeline gives it: 0 on the given frame
        for kind, text in texts.items():
            err = ((model(xt, t_in, text) - target) ** 2).mean(-1)  # (B, S)
            out[kind][i] = ((err * valid).sum(1) / valid.sum(1)).numpy()
    return out


def main() -> None:
    from learning_curve import add_run_args, run_pipeline
    from patchflow.evaluation.model_eval import FRAMES, SIZE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    parser.add_argument("--clips", type=int, default=32, help="clips (half translations; default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--given-first", action="store_true",
                        help="give the first latent frame clean (image-to-video): is the word read once the layout is known?")
    args = parser.parse_args()

    pipe = run_pipeline(args.run, args.checkpoint)
    pipe.transformer.eval()
    sets = captions(args.clips, args.seed)
    result = losses(pipe, sets, FRAMES, SIZE, args.seed, args.given_first)
    moving = np.array([s["translation"] for s in sets])
    task = "image-to-video (first latent frame given)" if args.given_first else "text-to-video"
    print(f"{args.checkpoint or args.run}, {task}: flow loss with the true caption, and the gap a swapped word opens")
    print("| t | true loss | colour swapped | shape swapped | motion swapped (translations) | motion swapped (others) |")
    print("|---|---|---|---|---|---|")
    def gap(kind: str, i: int, rows=slice(None)) -> str:  # swapped - true, in % of true, at TIMES[i]
        return f"{100 * (result[kind][i][rows].mean() / result['true'][i][rows].mean() - 1):+.1f}%"

    for i, t in enumerate(TIMES):
        print(f"| {t} | {result['true'][i].mean():.4f} | {gap('colour', i)} | {gap('shape', i)} | "
              f"{gap('motion', i, moving)} | {gap('motion', i, ~moving)} |")
    motions = sorted({s["motion_word"] for s in sets})
    print("\nThe motion word swapped (" + ", ".join(f"{m} -> {OPPOSITE[m]}" for m in motions) + "), by the true motion:")
    print("| t | " + " | ".join(motions) + " |")
    print("|---|" + "---|" * len(motions))
    for i, t in enumerate(TIMES):
        cells = [gap("motion", i, np.array([s["motion_word"] == m for s in sets])) for m in motions]
        print(f"| {t} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
