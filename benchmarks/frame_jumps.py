"""Do a model's latent frames agree? The object's jump at latent-frame boundaries against within them.

    python benchmarks/frame_jumps.py runs/probes/warm-b32/run [--checkpoint CKPT] [--count 48] [--shift 2]
    python benchmarks/frame_jumps.py --ground-truth      # the same clips rendered and through the VAE

The causal VAE decodes latent frame 0 to video frame 0 and latent frame j >= 1 to frames
4j-3 .. 4j, so inside a latent frame the decoder keeps an object coherent, and a DiT whose latent
frames disagree shows it as jumps at frames 1, 5, 9 and 13. For the held-out row's videos (one
object, 64x64x17, the same items as `patchflow eval model`) this measures the named colour's
centroid in every frame and prints the mean centroid step (pixels) across latent boundaries and
within latent frames, and their ratio: about 1 for smooth motion (ground truth), large when each
latent frame puts the object somewhere else. Probes of 2026-12-07 in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from patchflow.data.video_processing import to_model_video, to_user_video
from patchflow.evaluation.model_eval import FRAMES, SIZE, build_items
from patchflow.shapes.evaluate import label_pixels
from patchflow.shapes.world import COLORS, parse_prompt, render_scene

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import add_model_args, model_pipeline  # noqa: E402

VAE = Path(__file__).resolve().parents[1] / "src/patchflow/pretrained/vae-general"
FT = 4  # video frames per latent frame after the first


def centroids(video: np.ndarray, color: str) -> np.ndarray:
    """The named colour's centroid (y, x) per frame, NaN where the colour is absent: [T, 2]."""
    mask = label_pixels(video) == list(COLORS).index(color)  # palette order: object colours first
    out = np.full((len(video), 2), np.nan)
    for t, m in enumerate(mask):
        ys, xs = np.nonzero(m)
        if len(ys) >= 4:
            out[t] = ys.mean(), xs.mean()
    return out


def jumps(videos: list[np.ndarray], colors: list[str]) -> dict[str, float]:
    """Mean centroid step (pixels) across latent-frame boundaries and within latent frames."""
    first = np.zeros(FRAMES - 1, dtype=bool)
    first[[k - 1 for k in range(1, FRAMES, FT)]] = True  # step k-1 -> k where k starts a latent frame
    across, within = [], []
    for video, color in zip(videos, colors):
        step = np.linalg.norm(np.diff(centroids(video, color), axis=0), axis=1)  # (T-1,)
        across += [s for s in step[first] if np.isfinite(s)]
        within += [s for s in step[~first] if np.isfinite(s)]
    a, w = float(np.mean(across)), float(np.mean(within))
    return {"across_px": round(a, 2), "within_px": round(w, 2), "ratio": round(a / max(w, 1e-6), 2),
            "videos": len(videos)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--ground-truth", action="store_true", help="the rendered clips through the general VAE")
    parser.add_argument("--count", type=int, default=48)
    args = parser.parse_args()
    if (args.run is None) == (not args.ground_truth):
        parser.error("give a run, or --ground-truth")

    items = build_items("heldout", args.count)
    colors = [parse_prompt(it.prompt).objects[0].color for it in items]
    if args.ground_truth:
        from patchflow.models.vae import VideoVAE

        vae = VideoVAE.from_pretrained(VAE).eval()
        videos = []
        with torch.no_grad():
            for it in items:
                x = to_model_video(render_scene(it.target, SIZE, SIZE, FRAMES))[None]  # (1, 3, T, H, W)
                videos.append(to_user_video(vae.decode(vae.encode(x).mean)[0].clamp(-1, 1)))
        result = {"source": "ground truth through the VAE", **jumps(videos, colors)}
    else:
        pipe = model_pipeline(args)
        videos = []
        for i in range(0, len(items), 8):
            batch = items[i:i + 8]
            out = pipe([it.prompt for it in batch], num_frames=FRAMES, height=SIZE, width=SIZE,
                       num_inference_steps=args.steps, guidance_scale=args.guidance, shift=args.shift,
                       seed=[it.seed for it in batch], progress=False)
            videos += list(out)
        result = {"source": str(args.checkpoint or args.run), "shift": args.shift, **jumps(videos, colors)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
