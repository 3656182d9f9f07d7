"""How fast does a DiT recipe fit? Memorise a few cached clips, then try to generate them back.

    python benchmarks/memorize.py --vae runs/shapes-vae/final/vae [--clips 8] [--steps 1200]
        [--lr 2e-3] [--out runs/memorize] [--set dit.preset="S/2" ...]

A five-minute probe for the DiT's own levers (model size, learning rate, timestep distribution,
objective): caches the first `--clips` training clips of `--config` (text-to-video only, no caption
dropout), trains `--steps` steps on them alone, then generates each clip of more than one frame
from its plain caption (guidance 1, seed 0) and reports its PSNR against the VAE's decoding of the
cached latent and whether `patchflow eval shapes` passes it. A recipe that cannot reproduce its
own 8 training clips will not generalise either; one that does it in fewer steps fits faster.
Measured (benchmarks/RESULTS.md, "Whitened latents and the DiT's fitting speed"), 2-core CPU,
2026-12-02, DiT mini, lr 2e-3, 1,200 steps (6.5 min in all): loss 0.027, 6 of 8 clips pass, 31.3 dB
mean; after 400 steps: 0 of 8.
Writes OUT/sheet.png (clip above, generation below) and prints one JSON line per clip and a summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from patchflow.training.cache import build_cache
from patchflow.training.config import load_config
from patchflow.training.cache import CachedLatents, cache_key
from patchflow.shapes.evaluate import evaluate_video
from patchflow.data.grid import contact_sheet
from patchflow.pipelines.pipeline import VideoPipeline
from patchflow.training.loop import train

ONLY_TEXT_TO_VIDEO = ["tasks.text_to_video=1.0", "tasks.image_to_video=0.0", "tasks.extend_forward=0.0",
                      "tasks.extend_backward=0.0", "tasks.connect=0.0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shapes-world.toml", help="the DiT recipe to probe")
    parser.add_argument("--vae", required=True, help="trained VAE folder (its latents are what the DiT learns)")
    parser.add_argument("--clips", type=int, default=8, help="training clips to memorise (default 8)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/memorize"), help="folder, replaced")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="more config overrides, as for `patchflow train`")
    args = parser.parse_args()
    if args.clips < 1 or args.steps < 1:
        parser.error(f"--clips and --steps must be >= 1, got {args.clips} and {args.steps}")

    shutil.rmtree(args.out, ignore_errors=True)
    cache = args.out / "cache"
    sets = [f'vae.path="{args.vae}"', "data.caption_dropout=0.0", *ONLY_TEXT_TO_VIDEO,
            f"train.steps={args.steps}", f"train.batch_size={args.batch}", f"train.lr={args.lr}",
            "train.warmup=20", f"train.checkpoint_every={args.steps}", "train.log_every=100",
            "train.ema_decay=0.99", *args.sets]
    build_cache(load_config(args.config, sets), cache, items=args.clips, progress=False)
    config = load_config(args.config, [*sets, f'data.cache="{cache}"'])
    train("dit", config, args.out / "run", progress=True)
    log = [json.loads(line) for line in (args.out / "run" / "log.jsonl").read_text().splitlines()]

    pipe = VideoPipeline.from_pretrained(args.out / "run")
    data = CachedLatents(cache, cache_key(config))
    rows, videos, captions = [], [], []
    for i in range(len(data)):
        item = data[i]
        latent = pipe.vae.normalize(item["latent"][0][None].float())
        if latent.shape[2] == 1:
            continue  # an image: nothing to move
        truth = pipe.decode_latents(latent)[0]  # what a perfect DiT would give through this VAE
        caption = item["captions"]["plain"]
        frames, height, width = truth.shape[:3]
        made = np.asarray(pipe(caption, num_frames=frames, height=height, width=width, guidance_scale=1.0,
                               seed=0, progress=False)).reshape(truth.shape)
        mse = float(((made.astype(np.float64) - truth) ** 2).mean())
        rows.append({"clip": i, "caption": caption, "psnr": round(10 * np.log10(255**2 / max(mse, 1e-10)), 2),
                     "passes": evaluate_video(made, caption).passed})
        print(json.dumps(rows[-1]), flush=True)
        videos += [truth, made]
        captions += [caption, "generated"]
    contact_sheet(videos, captions, args.out / "sheet.png", columns=2)
    summary = {"steps": args.steps, "final_loss": round(log[-1]["loss"], 4), "clips": len(rows),
               "passed": sum(r["passes"] for r in rows), "psnr_mean": round(float(np.mean([r["psnr"] for r in rows])), 2)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
