"""Does a model lay the scene out from the caption at the noisy end? Its clean-clip estimate at t ~ 1.

    python benchmarks/noisy_end.py RUN [--checkpoint CKPT] [--t 0.999] [--draws 16] [--prompts heldout]

Shapes World starts a translating object on the side opposite its direction (the path stays on the
canvas), so the direction word is a layout, and a sampler decides it in its first steps, from the
caption alone. For "a large red square moving left|right|up|down on a black background" this prints
where the red mass is in the first and last frames of (a) the mean of `--draws` renders (the truth's
conditional mean) and (b) the model's estimate x0 = x_t - t v at noise level `--t`, averaged over as
many noise draws (no guidance), both decoded; and the displacement from first to last frame along the
named direction. A model that reads the word moves the mass like the truth (about 32 px); one that
does not keeps it in the centre (benchmarks/RESULTS.md, "Fifth sitting").

`--prompts heldout` asks the same of the one-object translations among the first 48 prompts of
`patchflow eval model`'s held-out row (colour/shape/direction triples never seen in training), the
object found as the mass that differs from the named background: whether the layout is learned as a
factor of its own or per combination seen.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from learning_curve import add_run_args, run_pipeline
from motion_probe import DIRECTIONS
from patchflow.evaluation.model_eval import FRAMES, SIZE, build_items
from patchflow.flow import interpolate
from patchflow.models.patches import pad_batch
from patchflow.shapes.world import BACKGROUNDS, render


def object_centre(frame: np.ndarray, background: str) -> np.ndarray:
    """(y, x) centre of the pixels clearly unlike the named background, weighted by how much."""
    diff = np.abs(frame.astype(np.float32) - np.array(BACKGROUNDS[background], np.float32)).sum(-1)
    w = np.clip(diff - 24, 0, None) + 1e-6
    ys, xs = np.mgrid[:frame.shape[0], :frame.shape[1]]
    return np.array([(w * ys).sum(), (w * xs).sum()]) / w.sum()


def probe_prompts(which: str) -> list[tuple[str, str, str]]:
    """(prompt, direction word, background) to probe: the four red squares, or the held-out translations."""
    if which == "red":
        return [(f"a large red square moving {w} on a black background", w, "black") for w in DIRECTIONS]
    rows = {}
    for item in build_items("heldout", 48):
        obj = item.target.objects[0] if len(item.target.objects) == 1 else None
        if obj is not None and obj.motion.startswith("moving "):
            rows[item.prompt] = (item.prompt, obj.motion.split()[1], item.target.background)
    return list(rows.values())


@torch.no_grad()
def noisy_end_means(pipe, t: float, draws: int, prompts: list[tuple[str, str, str]]) -> list[dict]:
    rows = []
    for prompt, word, background in prompts:
        uy, ux = DIRECTIONS[word]
        latents = pipe.encode_video(np.stack([render(prompt, SIZE, SIZE, FRAMES, seed=2000 + i) for i in range(draws)]))
        cond = [torch.zeros(latents.shape[2], dtype=torch.bool)] * draws
        packed = pad_batch(list(latents), tuple(pipe.transformer.config.patch_size), cond_frames=cond)
        noise = torch.randn(packed.tokens.shape, generator=torch.Generator().manual_seed(1))
        xt = interpolate(packed.tokens, noise, t)
        v = pipe._model_fn(packed, draws)(xt, (packed.sample_ids >= 0).float() * t, pipe.encode_prompt([prompt] * draws))
        estimate = torch.stack(packed.unpack(xt - t * v)).mean(0, keepdim=True)
        row = {"prompt": prompt}
        for name, lat in (("truth", latents.mean(0, keepdim=True)), ("model", estimate)):
            video = pipe.decode_latents(lat)[0]
            first, last = object_centre(video[0], background), object_centre(video[-1], background)
            row[name] = {"first": first.round(1).tolist(), "last": last.round(1).tolist(),
                         "along": round(float((last - first) @ np.array([uy, ux])), 1)}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    parser.add_argument("--t", type=float, default=0.999, help="the noise level (default 0.999)")
    parser.add_argument("--draws", type=int, default=16, help="renders and noise draws per prompt (default 16)")
    parser.add_argument("--prompts", choices=("red", "heldout"), default="red",
                        help="the four red squares (default) or the held-out row's one-object translations")
    args = parser.parse_args()
    if not 0.0 < args.t <= 1.0 or args.draws < 1:
        parser.error(f"need 0 < --t <= 1 and --draws >= 1, got {args.t} and {args.draws}")
    rows = noisy_end_means(run_pipeline(args.run, args.checkpoint), args.t, args.draws, probe_prompts(args.prompts))
    print(json.dumps({"source": str(args.checkpoint or args.run), "t": args.t, "draws": args.draws,
                      "prompts": args.prompts}))
    for row in rows:
        print(json.dumps(row))
    truth, model = (np.array([r[k]["along"] for r in rows]) for k in ("truth", "model"))
    print(json.dumps({"mean_along": {"truth": round(float(truth.mean()), 1), "model": round(float(model.mean()), 1)},
                      "half_way": f"{int(np.sum(model >= truth / 2))}/{len(rows)}"}))


if __name__ == "__main__":
    main()
