"""The ceiling a DiT on a VAE's latents can reach: held-out ground truth through the VAE, judged.

    python benchmarks/vae_ceiling.py src/patchflow/pretrained/vae-general runs/vae4/run/final/vae [--count 64] \
        [--failures DIR]

Each VAE encodes `--count` held-out Shapes World clips (64x64x17, scenes from seed 1000 on) to the
posterior mean and decodes them; the evaluator judges the round trip against the clip's record
(a perfect DiT could not score higher) and PSNR measures it. One line per VAE, with the failed
checks counted by the object's size and shape; `--failures DIR` also writes DIR/<vae name>.png, the
failing round trips beside their ground truth (the path's / as _).
Results: benchmarks/RESULTS.md ("Second sitting" of the probe ladder).
"""

from __future__ import annotations

import argparse
import json

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from patchflow.data.grid import contact_sheet
from patchflow.evaluation.metrics import psnr
from patchflow.models.vae import VideoVAE
from patchflow.shapes.captions import plain_caption
from patchflow.shapes.evaluate import evaluate_video, summarize
from patchflow.shapes.world import render_scene, sample_scene
from patchflow.training.checkpoint import load_checkpoint


def load_vae(path: str) -> VideoVAE:
    """A VAE folder, or a training checkpoint (RUN/checkpoints/step_N.pt: its EMA weights, in the
    architecture of the run's `[vae] path`), so a run can be judged while it trains."""
    if not path.endswith(".pt"):
        return VideoVAE.from_pretrained(path)
    run = Path(path).parent.parent
    vae = VideoVAE.from_pretrained(json.loads((run / "config.json").read_text())["vae"]["path"])
    state = load_checkpoint(Path(path))
    vae.load_state_dict(state["ema"] or state["model"])
    return vae


@torch.no_grad()
def round_trips(vae: VideoVAE, records: list, batch: int = 1) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(ground truth, round trip, PSNR) of each record rendered at 64x64x17: the posterior mean decoded,
    `batch` clips a pass. uint8 [T, H, W, 3] videos."""
    out = []
    for i in range(0, len(records), batch):
        clips = np.stack([render_scene(r, 64, 64, 17) for r in records[i:i + batch]])  # (B, T, H, W, 3)
        x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1      # (B, 3, T, H, W)
        y = vae.decode(vae.encode(x).mean).clamp(-1, 1)
        for clip, yi, xi in zip(clips, y, x):
            video = ((yi.permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
            out.append((clip, video, float(psnr(yi[None], xi[None]))))
    return out


def ceiling(path: str, count: int, failures: Path | None = None) -> dict:
    vae = load_vae(path).eval()
    records = [sample_scene(1000 + i, split="heldout") for i in range(count)]
    results, psnrs, failed, kinds = [], [], [], Counter()
    for record, (clip, video, db) in zip(records, round_trips(vae, records)):
        results.append(evaluate_video(video, record))
        psnrs.append(db)
        bad = [k for k, v in results[-1].checks.items() if v is False]
        if bad:
            objects = record.objects
            what = f"{objects[0].size} {objects[0].shape}" if len(objects) == 1 else "two objects"
            kinds.update(f"{check}: {what}" for check in bad)
            failed += [(clip, f"truth: {plain_caption(record)}"), (video, f"round trip fails {', '.join(bad)}")]
    if failures is not None and failed:
        failures.mkdir(parents=True, exist_ok=True)
        contact_sheet([v for v, _ in failed], [c for _, c in failed],
                      failures / (str(path).strip("/").replace("/", "_") + ".png"), columns=5, per_row=2)
    return {"vae": path, "psnr": round(float(np.mean(psnrs)), 2),
            **{k: round(v, 3) for k, v in summarize(results).items()}, "failed": dict(sorted(kinds.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vaes", nargs="+", help="VAE folders (config.json + model.safetensors) or VAE-run checkpoints (.pt)")
    parser.add_argument("--count", type=int, default=64, help="held-out clips (default 64)")
    parser.add_argument("--failures", type=Path, help="folder for a contact sheet of each VAE's failing clips")
    args = parser.parse_args()
    for path in args.vaes:
        print(ceiling(path, args.count, args.failures))


if __name__ == "__main__":
    main()
