"""The ceiling a DiT on a VAE's latents can reach: held-out ground truth through the VAE, judged.

    python benchmarks/vae_ceiling.py src/patchflow/pretrained/vae-general runs/vae4/run/final/vae [--count 64]

Each VAE encodes `--count` held-out Shapes World clips (64x64x17, scenes from seed 1000 on) to the
posterior mean and decodes them; the evaluator judges the round trip against the clip's record
(a perfect DiT could not score higher) and PSNR measures it. One line per VAE.
Results: benchmarks/RESULTS.md ("Second sitting" of the probe ladder).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from patchflow.evaluation.metrics import psnr
from patchflow.models.vae import VideoVAE
from patchflow.shapes.evaluate import evaluate_video, summarize
from patchflow.shapes.world import render_scene, sample_scene


def ceiling(path: str, count: int) -> dict:
    vae = VideoVAE.from_pretrained(path).eval()
    results, psnrs = [], []
    for i in range(count):
        record = sample_scene(1000 + i, split="heldout")
        clip = render_scene(record, 64, 64, 17)
        x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # [1, 3, T, H, W]
        with torch.no_grad():
            y = vae.decode(vae.encode(x).mean).clamp(-1, 1)
        video = ((y[0].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
        results.append(evaluate_video(video, record))
        psnrs.append(float(psnr(y, x)))
    return {"vae": path, "psnr": round(float(np.mean(psnrs)), 2),
            **{k: round(v, 3) for k, v in summarize(results).items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vaes", nargs="+", help="VAE folders (config.json + model.safetensors)")
    parser.add_argument("--count", type=int, default=64, help="held-out clips (default 64)")
    args = parser.parse_args()
    for path in args.vaes:
        print(ceiling(path, args.count))


if __name__ == "__main__":
    main()
