"""Does a model lay the scene out from the caption at the noisy end? Its clean-clip estimate at t ~ 1.

    python benchmarks/noisy_end.py RUN [--checkpoint CKPT] [--t 0.999] [--draws 16] [--prompts heldout|objects]

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

The displacement says where the mass goes, not how much of it: a model that moves a faint copy of the
object's mean places nothing in a sample. So for every object whose four directions are probed (the
red square; `--prompts objects`: six objects of both sizes, several colours and all backgrounds) this
also prints the *layout gain*: the projection, in latent space, of the model's direction-dependent
estimate (each direction's mean minus the mean over the four) onto the truth's; 1 is the truth's
layout at full strength, 0 a model that ignores the word. Samples follow the word once it is high
(a narrow expert at 0.77 moved 48 of 64 videos the named way; at 0.27, 14 of 64).
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


GAIN_OBJECTS = [("large red square", "black"), ("large blue square", "white"), ("small yellow circle", "gray"),
                ("large cyan triangle", "white"), ("small purple circle", "black"), ("small orange square", "gray")]


def probe_prompts(which: str) -> list[tuple[str, str, str]]:
    """(prompt, direction word, background) to probe: the four red squares, six objects in four directions
    each, or the held-out translations."""
    if which in ("red", "objects"):
        return [(f"a {obj} moving {w} on a {bg} background", w, bg)
                for obj, bg in GAIN_OBJECTS[:1 if which == "red" else None] for w in DIRECTIONS]
    rows = {}
    for item in build_items("heldout", 48):
        obj = item.target.objects[0] if len(item.target.objects) == 1 else None
        if obj is not None and obj.motion.startswith("moving "):
            rows[item.prompt] = (item.prompt, obj.motion.split()[1], item.target.background)
    return list(rows.values())


@torch.no_grad()
def noisy_end_means(pipe, t: float, draws: int, prompts: list[tuple[str, str, str]]) -> tuple[list[dict], dict]:
    """One row per prompt (where the object's mass goes, truth and model), and the mean latents
    {prompt: (truth, model)} for layout_gain."""
    rows, means = [], {}
    for prompt, word, background in prompts:
        uy, ux = DIRECTIONS[word]
        latents = pipe.encode_video(np.stack([render(prompt, SIZE, SIZE, FRAMES, seed=2000 + i) for i in range(draws)]))
        cond = [torch.zeros(latents.shape[2], dtype=torch.bool)] * draws
        packed = pad_batch(list(latents), tuple(pipe.transformer.config.patch_size), cond_frames=cond)
        noise = torch.randn(packed.tokens.shape, generator=torch.Generator().manual_seed(1))
        xt = interpolate(packed.tokens, noise, t)
        v = pipe._model_fn(packed, draws)(xt, (packed.sample_ids >= 0).float() * t, pipe.encode_prompt([prompt] * draws))
        estimate = torch.stack(packed.unpack(xt - t * v)).mean(0, keepdim=True)
        row, means[prompt] = {"prompt": prompt}, (latents.mean(0), estimate[0])
        for name, lat in (("truth", latents.mean(0, keepdim=True)), ("model", estimate)):
            video = pipe.decode_latents(lat)[0]
            first, last = object_centre(video[0], background), object_centre(video[-1], background)
            row[name] = {"first": first.round(1).tolist(), "last": last.round(1).tolist(),
                         "along": round(float((last - first) @ np.array([uy, ux])), 1)}
        rows.append(row)
    return rows, means


def layout_gain(means: dict) -> dict[str, float]:
    """Per object probed in all four directions: <M, T> / <T, T>, where T and M are the truth's and the
    model's mean latents per direction minus their mean over the four directions."""
    groups: dict[str, list] = {}
    for prompt, pair in means.items():
        word = next(w for w in DIRECTIONS if f" moving {w} " in prompt)
        groups.setdefault(prompt.replace(f" moving {word} ", " moving * "), []).append(pair)
    gains = {}
    for key, pairs in groups.items():
        if len(pairs) == len(DIRECTIONS):
            truth, model = (torch.stack([p[i] for p in pairs]) for i in (0, 1))
            truth, model = truth - truth.mean(0), model - model.mean(0)
            gains[key] = round(float((model * truth).sum() / (truth * truth).sum()), 3)
    return gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    parser.add_argument("--t", type=float, default=0.999, help="the noise level (default 0.999)")
    parser.add_argument("--draws", type=int, default=16, help="renders and noise draws per prompt (default 16)")
    parser.add_argument("--prompts", choices=("red", "objects", "heldout"), default="red",
                        help="the four red squares (default), six objects in four directions (layout gain), "
                             "or the held-out row's one-object translations")
    args = parser.parse_args()
    if not 0.0 < args.t <= 1.0 or args.draws < 1:
        parser.error(f"need 0 < --t <= 1 and --draws >= 1, got {args.t} and {args.draws}")
    rows, means = noisy_end_means(run_pipeline(args.run, args.checkpoint), args.t, args.draws, probe_prompts(args.prompts))
    print(json.dumps({"source": str(args.checkpoint or args.run), "t": args.t, "draws": args.draws,
                      "prompts": args.prompts}))
    for row in rows:
        print(json.dumps(row))
    truth, model = (np.array([r[k]["along"] for r in rows]) for k in ("truth", "model"))
    gains = layout_gain(means)
    print(json.dumps({"mean_along": {"truth": round(float(truth.mean()), 1), "model": round(float(model.mean()), 1)},
                      "half_way": f"{int(np.sum(model >= truth / 2))}/{len(rows)}", "layout_gain": gains,
                      "mean_gain": round(float(np.mean(list(gains.values()))), 3) if gains else None}))


if __name__ == "__main__":
    main()
