"""Does a model lay the scene out from the caption at the noisy end? Its clean-clip estimate at t ~ 1.

    python benchmarks/noisy_end.py RUN [--checkpoint CKPT] [--t 0.999] [--draws 16]

Shapes World starts a translating object on the side opposite its direction (the path stays on the
canvas), so the direction word is a layout, and a sampler decides it in its first steps, from the
caption alone. For "a large red square moving left|right|up|down on a black background" this prints
where the red mass is in the first and last frames of (a) the mean of `--draws` renders (the truth's
conditional mean) and (b) the model's estimate x0 = x_t - t v at noise level `--t`, averaged over as
many noise draws (no guidance), both decoded; and the displacement from first to last frame along the
named direction. A model that reads the word moves the mass like the truth (about 32 px); one that
does not keeps it in the centre (benchmarks/RESULTS.md, "Fifth sitting").
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from learning_curve import add_run_args, run_pipeline
from motion_probe import DIRECTIONS
from patchflow.evaluation.model_eval import FRAMES, SIZE
from patchflow.flow import interpolate
from patchflow.models.patches import pad_batch
from patchflow.shapes.world import render


def red_centre(frame: np.ndarray) -> np.ndarray:
    """(y, x) centre of the pixels clearly redder than green and blue, weighted by how much."""
    f = frame.astype(np.float32)
    w = np.clip(f[..., 0] - f[..., 1:].max(-1) - 20, 0, None) + 1e-6
    ys, xs = np.mgrid[:frame.shape[0], :frame.shape[1]]
    return np.array([(w * ys).sum(), (w * xs).sum()]) / w.sum()


@torch.no_grad()
def noisy_end_means(pipe, t: float, draws: int) -> list[dict]:
    rows = []
    for word, (uy, ux) in DIRECTIONS.items():
        prompt = f"a large red square moving {word} on a black background"
        latents = pipe.encode_video(np.stack([render(prompt, SIZE, SIZE, FRAMES, seed=2000 + i) for i in range(draws)]))
        cond = [torch.zeros(latents.shape[2], dtype=torch.bool)] * draws
        packed = pad_batch(list(latents), tuple(pipe.transformer.config.patch_size), cond_frames=cond)
        noise = torch.randn(packed.tokens.shape, generator=torch.Generator().manual_seed(1))
        xt = interpolate(packed.tokens, noise, t)
        v = pipe._model_fn(packed, draws)(xt, (packed.sample_ids >= 0).float() * t, pipe.encode_prompt([prompt] * draws))
        estimate = torch.stack(packed.unpack(xt - t * v)).mean(0, keepdim=True)
        row = {"word": word}
        for name, lat in (("truth", latents.mean(0, keepdim=True)), ("model", estimate)):
            video = pipe.decode_latents(lat)[0]
            first, last = red_centre(video[0]), red_centre(video[-1])
            row[name] = {"first": first.round(1).tolist(), "last": last.round(1).tolist(),
                         "along": round(float((last - first) @ np.array([uy, ux])), 1)}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    parser.add_argument("--t", type=float, default=0.999, help="the noise level (default 0.999)")
    parser.add_argument("--draws", type=int, default=16, help="renders and noise draws per word (default 16)")
    args = parser.parse_args()
    if not 0.0 < args.t <= 1.0 or args.draws < 1:
        parser.error(f"need 0 < --t <= 1 and --draws >= 1, got {args.t} and {args.draws}")
    rows = noisy_end_means(run_pipeline(args.run, args.checkpoint), args.t, args.draws)
    print(json.dumps({"source": str(args.checkpoint or args.run), "t": args.t, "draws": args.draws}))
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"mean_along": {"truth": round(float(np.mean([r["truth"]["along"] for r in rows])), 1),
                                     "model": round(float(np.mean([r["model"]["along"] for r in rows])), 1)}}))


if __name__ == "__main__":
    main()
