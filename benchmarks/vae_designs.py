"""Which VAE design learns real footage fastest on this CPU? Train each for the same wall-clock.

    python benchmarks/vae_designs.py [--minutes 10] [--designs today,shortcut,factorized]
        [--config configs/vae-general.toml] [--out runs/vae-designs]

Every design keeps the interface (causal, T' = 1 + (T-1)/4, 16 channels at 4x8x8) and trains
with `--config`'s data, loss and schedule; only its [vae] fields differ (`DESIGNS`). A design's
step count is set so that it trains for about `--minutes` of wall-clock: its seconds per step
are timed first on this machine (a few model steps on random clips of each frame count of the
config), so a cheaper design gets more steps and its cosine schedule still ends on time. Data
loading is not in that timing (it adds ~0.7 s/step here), so the real minutes differ a little
between designs; the table records them. Each is then scored on the
held-out real clips (bikes.mp4, carphone_*.mp4 at 17x128x128; `patchflow eval vae`).
Prints one JSON line per design and writes OUT/designs.md (the table for benchmarks/RESULTS.md).
Run it alone: any other CPU job skews the step timing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from patchflow.training.config import VAESection, load_config
from patchflow.data.footage import describe_footage
from patchflow.training.loop import train
from patchflow.models.vae import VideoVAE
from patchflow.evaluation.vae_eval import eval_vae_report
from patchflow.training.vae_loss import VAELoss

# name -> (the whole [vae] table, what it tries); each replaces --config's [vae] table
DESIGNS = {
    "today": ({"preset": "4x8x8x16"}, "the 4x8x8x16 preset as it was: RMS norm, 3x3x3 convs, learned layers only"),
    "shortcut": ({"preset": "4x8x8x16", "norm": "group", "shortcut": True, "logvar_init": -10.0},
                 "+ DC-AE parameter-free shortcut, GroupNorm, near-deterministic posterior"),
    "factorized": ({"preset": "4x8x8x16", "norm": "group", "shortcut": True, "logvar_init": -10.0,
                    "conv": "factorized"}, "+ (1,3,3) then (3,1,1) convs (Cosmos): the `general` preset"),
    "factorized-wide": ({"preset": "4x8x8x16", "norm": "group", "shortcut": True, "logvar_init": -10.0,
                         "conv": "factorized", "base_channels": 96}, "factorized at width 96"),
}


def seconds_per_step(config, repeats: int = 2) -> float:
    """Mean wall seconds of one training step of `config`'s VAE and loss, over its frame counts."""
    torch.manual_seed(0)
    vae = VideoVAE(config.vae.build())
    loss_fn = VAELoss(config.vae_loss)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    h, w = config.data.sizes[0]
    times = []
    for frames in config.data.frames:
        x = torch.rand(config.train.batch_size, 3, frames, h, w) * 2 - 1
        for i in range(repeats + 1):
            start = time.perf_counter()
            recon, dist = vae(x)
            loss = loss_fn(x, recon, dist)[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:  # the first call warms up the kernels
                times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/vae-general.toml")
    parser.add_argument("--designs", default="today,shortcut,factorized",
                        help=f"comma-separated, from {', '.join(DESIGNS)}")
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-clock per design")
    parser.add_argument("--out", type=Path, default=Path("runs/vae-designs"))
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    names = args.designs.split(",")
    unknown = [n for n in names if n not in DESIGNS]
    if unknown or args.minutes <= 0:
        parser.error(f"unknown designs {unknown} (choose from {list(DESIGNS)}) or --minutes {args.minutes} <= 0")

    media = describe_footage()["opencv_media"]
    print(f"footage: OpenCV's samples {'from ' + media if media else 'not fetched (patchflow data fetch)'}", flush=True)
    rows = []
    for name in names:
        table, what = DESIGNS[name]
        config = load_config(args.config)
        config.vae = VAESection.from_table(table)  # the whole table, not a diff of the config's
        step_s = seconds_per_step(config)
        steps = max(config.train.warmup + 10, int(args.minutes * 60 / step_s))
        config = load_config(args.config, [f"train.steps={steps}", f"train.checkpoint_every={steps}"])
        config.vae = VAESection.from_table(table)
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        final = train("vae", config, out, progress=False)
        minutes = (time.perf_counter() - start) / 60
        report = eval_vae_report(model=final, frames=args.frames, height=args.size, width=args.size)
        params = sum(p.numel() for p in VideoVAE.from_pretrained(Path(final) / "vae").parameters())
        row = {"design": name, "what": what, "params_m": round(params / 1e6, 2), "s_per_step": round(step_s, 2),
               "steps": steps, "train_min": round(minutes, 1), "psnr": round(report["psnr"], 2),
               "psnr_min": round(report["psnr_min"], 2), "ssim": round(report["ssim"], 3)}
        print(json.dumps(row), flush=True)
        rows.append(row)

    lines = ["| design | what | params | s/step | steps | train min | PSNR mean (min) | SSIM |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['design']} | {r['what']} | {r['params_m']}M | {r['s_per_step']} | {r['steps']} | "
              f"{r['train_min']} | {r['psnr']} ({r['psnr_min']}) dB | {r['ssim']} |" for r in rows]
    lines.append(f"\nOpenCV's samples: {'fetched' if media else 'not fetched'}; {args.minutes} minutes per design.")
    (args.out / "designs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
