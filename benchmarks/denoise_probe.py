"""Where along the sampling trajectory does a Shapes World model fail? Denoise noised ground truth.

    python benchmarks/denoise_probe.py runs/probes/w128/run --checkpoints 1500 3000 [--count 16]

For each checkpoint's EMA weights, `--count` held-out one-object ground-truth clips (the first items
of `patchflow eval model`'s held-out row) are noised to t and denoised by the pipeline
(`pipe(prompt, video=clip, strength=t)`, SDEdit, `--sample-steps` Euler steps) at each guidance of
`--guidance`, and judged by the evaluator: fully correct, presence, shape and motion per (t,
guidance). Beside it, the model's flow-matching loss on the same clips' latents at fixed t (mean over
`--noises` noise draws, the caption given): the per-t loss of the clips whose generations are judged.
A model that denoises well from t = 0.3 but not from 0.9 fails where the layout is decided.
Prints one JSON line per checkpoint and a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from patchflow.training.checkpoint import list_checkpoints, load_checkpoint
from patchflow.shapes.world import render_scene
from patchflow.shapes.evaluate import evaluate_video
from patchflow.flow import flow_matching_loss
from patchflow.evaluation.model_eval import FRAMES, SIZE, build_items
from patchflow.models.patches import pack
from patchflow.pipelines.pipeline import VideoPipeline

SHOWN = ("all", "presence", "shape", "motion")


@torch.no_grad()
def loss_at(pipe: VideoPipeline, clips: list[np.ndarray], captions: list[str], t: float, noises: int) -> float:
    """Mean flow-matching loss of the pipeline's transformer on the clips' latents at noise level t."""
    x = torch.stack([torch.from_numpy(c).permute(3, 0, 1, 2).float() / 127.5 - 1 for c in clips])  # [B, 3, T, H, W]
    latents = pipe.vae.normalize(pipe.vae.encode(x).mean)                                        # [B, C, T', H', W']
    packed = pack(list(latents), pipe.transformer.config.patch_size)
    text, mask = pipe.text_encoder.encode(captions)
    t_tok = torch.full(packed.sample_ids.shape, t) * (packed.sample_ids >= 0)
    losses = []
    for seed in range(noises):
        loss, _ = flow_matching_loss(
            lambda x_t, t_tok, cond: pipe.transformer(x_t, t_tok, packed.coords, packed.sample_ids, *cond),
            packed.tokens, t_tok, (text, mask), generator=torch.Generator().manual_seed(seed),
            loss_mask=packed.loss_mask, sample_ids=packed.sample_ids, num_samples=len(clips))
        losses.append(float(loss))
    return float(np.mean(losses))


def probe(pipe: VideoPipeline, args) -> dict:
    items = build_items("heldout", args.count, seed=0)
    clips = [render_scene(it.target, SIZE, SIZE, FRAMES) for it in items]
    captions = [it.prompt for it in items]
    out = {"loss": {str(t): round(loss_at(pipe, clips, captions, t, args.noises), 4) for t in args.t}}
    for g in args.guidance:
        for t in args.t:
            results = []
            for b in range(0, len(items), 8):
                videos = pipe(captions[b:b + 8], video=clips[b:b + 8], strength=t, num_frames=FRAMES, height=SIZE,
                              width=SIZE, num_inference_steps=args.sample_steps, guidance_scale=g,
                              seed=[it.seed for it in items[b:b + 8]], progress=False)
                results += [evaluate_video(v, it.target) for v, it in zip(np.asarray(videos), items[b:b + 8])]
            shares = {"all": np.mean([r.passed for r in results])}
            for key in SHOWN[1:]:
                judged = [r.checks[key] for r in results if r.checks.get(key) is not None]
                shares[key] = float(np.mean(judged)) if judged else float("nan")
            out[f"g{g:g} t{t:g}"] = {k: round(float(v), 3) for k, v in shares.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a training run folder (its final pipeline and checkpoints)")
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[], help="steps (default: the final EMA)")
    parser.add_argument("--count", type=int, default=16, help="held-out clips (default 16)")
    parser.add_argument("--t", type=float, nargs="+", default=[0.3, 0.6, 0.9], help="noise levels (strengths)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[4.0, 1.0])
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--noises", type=int, default=4, help="noise draws per loss (default 4)")
    args = parser.parse_args()
    pipe = VideoPipeline.from_pretrained(args.run)
    points = {"final": None} if not args.checkpoints else {}
    for path in list_checkpoints(args.run / "checkpoints"):
        step = int(path.stem.split("_")[1])
        if step in args.checkpoints:
            points[str(step)] = path
    missing = set(map(str, args.checkpoints)) - set(points)
    if missing:
        parser.error(f"no checkpoints for steps {sorted(missing)} in {args.run / 'checkpoints'}")
    table = []
    for name, path in points.items():
        if path is not None:
            pipe.transformer.load_state_dict({k: v.float() for k, v in load_checkpoint(path)["ema"].items()})
        result = probe(pipe, args)
        print(json.dumps({"checkpoint": name, **result}), flush=True)
        table.append((name, result))
    print("| checkpoint, guidance | " + " | ".join(f"t = {t:g}" for t in args.t) + " |")
    print("|---|" + "---|" * len(args.t))
    for name, result in table:
        for g in args.guidance:
            cells = [" / ".join(f"{100 * result[f'g{g:g} t{t:g}'][k]:.0f}" for k in SHOWN) + "%" for t in args.t]
            print(f"| {name}, g {g:g} | " + " | ".join(cells) + " |")
        print(f"| {name}, loss | " + " | ".join(f"{result['loss'][str(t)]:.3f}" for t in args.t) + " |")


if __name__ == "__main__":
    main()
