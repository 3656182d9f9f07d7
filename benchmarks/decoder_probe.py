"""Can the decoder draw what the VAE ceiling loses, or has the latent already lost it?

    python benchmarks/decoder_probe.py src/patchflow/pretrained/shapes-world/vae --shape triangle --size small \
        [--steps 150] [--count 64] [--mix 0.5 --out runs/dec/tri]

The shipped VAE's round trip fails mostly on small triangles (benchmarks/vae_ceiling.py --failures: the
apex rounds off, so the fill ratio leaves the triangle's band). This tunes the decoder (encoder frozen,
MSE + 0.1 (1 - SSIM) as configs/shapes-decoder.toml, Adam lr `--lr`) on one-object training clips of
that shape and size only (`--mix S`: that share of each batch, the rest the world's own clips), then
judges `--count` held-out clips of it before and after. If even a decoder that sees nothing else cannot
draw them, the encoder's latent has lost the shape; if it can, a decoder with more capacity or more of
such clips would lift the ceiling. The learning rate falls linearly to 0. Prints one line before and one
after; `--out DIR` saves the tuned VAE (its encoder and latent statistics untouched, so
scripts/ship_model.py takes it as a decoder stage: `ship_model.py DIT_RUN DIR ...`).
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch
from tqdm.auto import tqdm

from patchflow.evaluation.metrics import ssim_frames
from patchflow.models.vae import VideoVAE
from patchflow.shapes.evaluate import evaluate_video
from patchflow.shapes.world import render_scene, sample_scene
from vae_ceiling import round_trips  # benchmarks/vae_ceiling.py, beside this file


def clips(split: str, shape: str, size: str, count: int, seed: int) -> list:
    """`count` one-object scene records of the split with the given shape and size."""
    rng, found = random.Random(seed), []
    while len(found) < count:
        record = sample_scene(rng, split, num_objects=1)
        if record.objects[0].shape == shape and record.objects[0].size == size:
            found.append(record)
    return found


def to_tensor(records: list) -> torch.Tensor:
    video = np.stack([render_scene(r, 64, 64, 17) for r in records])  # (B, T, H, W, 3) uint8
    return torch.from_numpy(video).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (B, 3, T, H, W)


def judge(vae: VideoVAE, records: list) -> dict:
    """The records' round trips through `vae`, judged: fully correct, shape kept, mean PSNR."""
    trips = round_trips(vae, records, batch=8)
    results = [evaluate_video(video, r) for r, (_, video, _) in zip(records, trips)]
    return {"all": round(float(np.mean([r.passed for r in results])), 3),
            "shape": round(float(np.mean([r.checks.get("shape") is not False for r in results])), 3),
            "psnr": round(float(np.mean([db for _, _, db in trips])), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vae", help="VAE folder")
    parser.add_argument("--shape", default="triangle", choices=("circle", "square", "triangle"))
    parser.add_argument("--size", default="small", choices=("small", "large"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--count", type=int, default=64, help="held-out clips judged (default 64)")
    parser.add_argument("--mix", type=float, default=1.0, help="share of each batch of that shape and size (default 1)")
    parser.add_argument("--out", help="save the tuned VAE to this folder")
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = VideoVAE.from_pretrained(args.vae).eval()
    held = clips("heldout", args.shape, args.size, args.count, seed=1000)
    print({"when": "before", **judge(vae, held)}, flush=True)
    vae.encoder.requires_grad_(False)
    decoder = [p for n, p in vae.named_parameters() if not n.startswith("encoder")]
    opt = torch.optim.Adam(decoder, lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / args.steps)
    focus = round(args.mix * args.batch)
    train = iter(clips("train", args.shape, args.size, args.steps * focus, seed=0))
    world = random.Random(1)
    for step in tqdm(range(args.steps), desc="decoder"):
        batch = [next(train) for _ in range(focus)] + [sample_scene(world, "train") for _ in range(args.batch - focus)]
        x = to_tensor(batch)
        with torch.no_grad():
            z = vae.encode(x).mean
        y = vae.decode(z)
        frames = lambda v: ((v + 1) / 2).transpose(1, 2).flatten(0, 1)  # (B*T, 3, H, W) in [0, 1]
        loss = (y - x).pow(2).mean() + 0.1 * (1 - ssim_frames(frames(y), frames(x)).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    print({"when": f"after {args.steps} steps, {focus} of {args.batch} {args.size} {args.shape}s",
           **judge(vae.eval(), held)}, flush=True)
    if args.out:
        vae.save_pretrained(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
