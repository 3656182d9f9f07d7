"""Learning curve of a VAE run: held-out PSNR/SSIM of each saved checkpoint against wall-clock and steps.

    python benchmarks/vae_learning_curve.py runs/vae-general [--frames 17 --size 128]
        [--every 200] [--plot docs/vae-general-curve.png] [--baseline bicubic]

Each checkpoint's EMA weights (else its trained weights) go into the run's final VAE (same config and
latent statistics) and are scored on the held-out real clips (`patchflow eval vae`'s default set).
Minutes are wall-clock from the run's start, read from log.jsonl. Writes RUN/vae_curve.json (resumable:
checkpoints already scored are skipped) and, with matplotlib, the plot, with the classic baseline at
the same number of stored values as a flat line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from learning_curve import save_curve_plot, step_minutes

from patchflow.training.checkpoint import list_checkpoints, load_checkpoint
from patchflow.data.footage import heldout_clips
from patchflow.evaluation.metrics import evaluate_vae
from patchflow.models.vae import VideoVAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--baseline", default="bicubic", help="classic codec drawn as a flat line ('' = none)")
    parser.add_argument("--every", type=int, default=1, help="only checkpoints whose step is a multiple of this")
    parser.add_argument("--plot", type=Path, default=Path("docs/vae-general-curve.png"))
    args = parser.parse_args()

    vae = VideoVAE.from_pretrained(args.run / "final" / "vae").eval()
    minutes = step_minutes(args.run)
    clips = heldout_clips()
    out_path = args.run / "vae_curve.json"
    settings = {"frames": args.frames, "size": args.size, "baseline": args.baseline}
    curve = json.loads(out_path.read_text()) if out_path.is_file() else {"settings": settings}
    if curve.get("settings") != settings:
        raise SystemExit(f"{out_path} was scored with {curve.get('settings')}, not {settings}: remove it first")

    def score(label: str, baseline: str | None = None) -> dict:
        rows = evaluate_vae(vae, clips, frames=args.frames, height=args.size, width=args.size, baseline=baseline)
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr", "ssim")}
        if baseline:
            mean.update({k: sum(r[k] for r in rows) / len(rows) for k in ("baseline_psnr", "baseline_ssim")})
        return {"label": label, **{k: round(v, 3) for k, v in mean.items()}}

    if "final" not in curve:
        curve["final"] = score("final", args.baseline or None)
        print(json.dumps(curve["final"]), flush=True)
    final_state = {k: v.clone() for k, v in vae.state_dict().items()}
    for path in list_checkpoints(args.run / "checkpoints"):
        state = load_checkpoint(path)
        step = int(state["step"])
        if str(step) in curve or step % args.every:
            continue
        weights = state["ema"] if state.get("ema") is not None else state["model"]
        vae.load_state_dict({k: v.float() for k, v in weights.items()})
        curve[str(step)] = {"step": step, "minutes": round(minutes[step], 2) if step in minutes else None,
                            **score(f"step {step}")}
        print(json.dumps(curve[str(step)]), flush=True)
        out_path.write_text(json.dumps(curve, indent=1) + "\n")
    vae.load_state_dict(final_state)
    out_path.write_text(json.dumps(curve, indent=1) + "\n")

    points = sorted((p for k, p in curve.items() if k not in ("final", "settings") and p["minutes"] is not None),
                    key=lambda p: p["step"])

    def draw(ax):
        ax.plot([p["minutes"] for p in points], [p["psnr"] for p in points], "o-", label="VAE (held-out mean)")
        if "baseline_psnr" in curve["final"]:
            ax.axhline(curve["final"]["baseline_psnr"], color="gray", ls="--",
                       label=f"{args.baseline}, same stored values")

    save_curve_plot(points, draw, "VAE", f"PSNR dB, {args.frames}x{args.size}x{args.size}", args.plot)

if __name__ == "__main__":
    main()
