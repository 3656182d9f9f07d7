"""Speed and peak memory of the video VAE presets: encode, decode, tiled, and a training step.

    python benchmarks/bench_vae.py                        # presets x default sizes
    python benchmarks/bench_vae.py --presets 4x8x8x16 --sizes 129x512x512 --tiled
    python benchmarks/bench_vae.py --train                # fwd+bwd step time of VAELoss training
    python benchmarks/bench_vae.py --tiling-error --model DIR --sizes 33x256x256 --tile-size 128
    python benchmarks/bench_vae.py --fit 30 --presets 4x8x8x16 --save DIR   # 30-minute learning-curve probe

Each case runs in a fresh subprocess, so its peak memory is its own: on CPU the
process's max resident set size (`resource.getrusage`, includes ~0.3 GB of
torch itself, printed as `base`), on CUDA `torch.cuda.max_memory_allocated`.
Weights are random (speed and memory do not depend on them). Prints one
markdown table row per case.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from patchflow.models.vae import VAE_PRESETS, VideoVAE
from patchflow.training.vae_loss import VAELoss

DEFAULT_SIZES = ("1x256x256", "17x128x128", "33x256x256")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(preset: str, size: str, tiled: bool, train: bool, device: str, tile_size: int, overlap: int,
             tile_frames: int) -> dict:
    """One measurement in this process; returns a JSON-ready dict."""
    device = torch.device(device)
    t, h, w = (int(v) for v in size.split("x"))
    vae = VideoVAE(VAE_PRESETS[preset]()).to(device)
    x = (torch.rand(1, 3, t, h, w, device=device) * 2 - 1)
    base = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = {"preset": preset, "size": size, "tiled": tiled, "params_m": vae.num_parameters() / 1e6,
           "threads": torch.get_num_threads(), "device": str(device), "base_rss_mb": base}
    if train:
        loss_fn = VAELoss().to(device)
        opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            recon, post = vae(x)
            loss, _ = loss_fn(x, recon, post)
            opt.zero_grad()
            loss.backward()
            opt.step()
            _sync(device)
            times.append(time.perf_counter() - t0)
        out["step_s"] = sorted(times)[1]  # median of 3
    else:
        vae.eval()
        if tiled:
            vae.enable_tiling(tile_frames=tile_frames, tile_size=tile_size, overlap=overlap)
        with torch.inference_mode():
            t0 = time.perf_counter()
            z = vae.encode(x).mode()
            _sync(device)
            t1 = time.perf_counter()
            recon = vae.decode(z)
            _sync(device)
            t2 = time.perf_counter()
        out.update(encode_s=t1 - t0, decode_s=t2 - t1, latent=list(z.shape[1:]))
        assert recon.shape == x.shape
    out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    return out


def tiling_error(model: str | None, preset: str, size: str, tile_size: int, overlap: int, tile_frames: int) -> None:
    """Max |tiled - untiled| of latents and decoded pixels on held-out footage (bikes.mp4)."""
    from patchflow.data.footage import heldout_clips
    from patchflow.data.io import read_video, resize_video
    from patchflow.evaluation.metrics import psnr

    t, h, w = (int(v) for v in size.split("x"))
    vae = VideoVAE.from_pretrained(model) if model else VideoVAE(VAE_PRESETS[preset]()).eval()
    video, _ = read_video(heldout_clips()[0], num_frames=t)
    x = torch.from_numpy(resize_video(video, h, w)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, T, H, W)
    with torch.inference_mode():
        z = vae.encode(x).mode()
        recon = vae.decode(z)
        vae.enable_tiling(tile_frames=tile_frames, tile_size=tile_size, overlap=overlap)
        z_t = vae.encode(x).mode()
        recon_t = vae.decode(z)
    print(f"| {model or preset + ' (random)'} | {size} | {tile_frames}f/{tile_size}px/{overlap} | "
          f"{(z_t - z).abs().max().item():.4f} (of {z.abs().max().item():.2f}) | "
          f"{(recon_t - recon).abs().max().item():.4f} | {psnr(recon.clamp(-1, 1), recon_t.clamp(-1, 1)):.1f} | "
          f"{psnr(x, recon.clamp(-1, 1)):.2f} |")


def fit(preset: str, minutes: float, save: str | None, lr: float = 3e-4, batch: int = 4) -> None:
    """Train a preset on FootageDataset (64 px, 1 or 9 frames) for `minutes`, then evaluate the held-out clips.

    A quick learning-curve probe (not the shipped training loop): plain AdamW, no discriminator.
    """
    from patchflow.data.footage import FootageDataset, heldout_clips
    from patchflow.evaluation.metrics import evaluate_vae, format_results

    torch.manual_seed(0)
    vae = VideoVAE(VAE_PRESETS[preset]())
    loss_fn = VAELoss()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    data = FootageDataset(frames=(1, 9), sizes=((64, 64),), seed=0, batch_size=batch)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)
    t0, logs_sum, n = time.perf_counter(), {}, 0
    for step, x in enumerate(loader):
        recon, post = vae(x)
        loss, logs = loss_fn(x, recon, post, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        logs_sum = {k: logs_sum.get(k, 0.0) + v for k, v in logs.items()}
        n += 1
        elapsed = time.perf_counter() - t0
        if (step + 1) % 100 == 0 or elapsed > 60 * minutes:
            print(f"step {step + 1} {elapsed / 60:.1f} min " + " ".join(f"{k} {v / n:.4f}" for k, v in logs_sum.items()),
                  flush=True)
            logs_sum, n = {}, 0
        if elapsed > 60 * minutes:
            break
    vae.eval()
    if save:
        vae.save_pretrained(save)
    for frames, size in ((17, 128), (9, 64)):
        print(f"held-out, {frames}x{size}x{size}:")
        print(format_results(evaluate_vae(vae, heldout_clips(), frames=frames, height=size, width=size)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default=",".join(k for k in VAE_PRESETS if k != "tiny"))
    p.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help="comma-separated TxHxW")
    p.add_argument("--tiled", action="store_true", help="enable temporal + spatial tiling")
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--tile-frames", type=int, default=16)
    p.add_argument("--train", action="store_true", help="time a training step (fwd + bwd + AdamW) instead")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiling-error", action="store_true", help="measure tiled vs untiled on held-out footage")
    p.add_argument("--model", default=None, help="a saved VAE folder for --tiling-error (default: random weights)")
    p.add_argument("--fit", type=float, default=0.0, help="train the first preset for this many minutes")
    p.add_argument("--save", default=None, help="folder to save the --fit model to")
    p.add_argument("--case", action="store_true", help=argparse.SUPPRESS)  # internal: run one case here
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit:
        fit(args.presets.split(",")[0], args.fit, args.save)
        return
    if args.tiling_error:
        print("| model | size | tiling | max err latents | max err pixels | PSNR tiled vs untiled | PSNR vs input |\n"
              "|---|---|---|---|---|---|---|")
        for size in args.sizes.split(","):
            tiling_error(args.model, args.presets.split(",")[0], size, args.tile_size, args.overlap,
                         args.tile_frames)
        return
    if args.case:
        print(json.dumps(run_case(args.presets, args.sizes, args.tiled, args.train, args.device,
                                  args.tile_size, args.overlap, args.tile_frames)))
        return
    if args.train:
        print("| preset | params | size | threads | step s | peak MB (base) |\n|---|---|---|---|---|---|")
    else:
        print("| preset | params | size | tiled | threads | latent | encode s | decode s | peak MB (base) |\n"
              "|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        for size in args.sizes.split(","):
            cmd = [sys.executable, __file__, "--case", "--presets", preset, "--sizes", size,
                   "--device", args.device, "--threads", str(args.threads), "--tile-size", str(args.tile_size),
                   "--overlap", str(args.overlap), "--tile-frames", str(args.tile_frames)]
            cmd += ["--tiled"] * args.tiled + ["--train"] * args.train
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"| {preset} | | {size} | failed: {proc.stderr.strip().splitlines()[-1]} |", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mem = f"{r['peak_mb']:.0f} ({r['base_rss_mb']:.0f})"
            if args.train:
                print(f"| {preset} | {r['params_m']:.2f}M | {size} | {r['threads']} | {r['step_s']:.2f} | {mem} |",
                      flush=True)
            else:
                tiled = f"{args.tile_frames}f/{args.tile_size}px/{args.overlap}" if r["tiled"] else "no"
                print(f"| {preset} | {r['params_m']:.2f}M | {size} | {tiled} | {r['threads']} | "
                      f"{'x'.join(map(str, r['latent']))} | {r['encode_s']:.2f} | {r['decode_s']:.2f} | {mem} |",
                      flush=True)


if __name__ == "__main__":
    main()
