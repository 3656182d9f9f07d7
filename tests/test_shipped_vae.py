"""The shipped general VAE (src/patchflow/pretrained/vae-general/) on held-out real footage."""

from __future__ import annotations

import pytest

from patchflow.paths import PACKAGE_DIR
from patchflow.models.vae import VAE_PRESETS, VideoVAE
from patchflow.evaluation.vae_eval import eval_vae_report

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = PACKAGE_DIR / "pretrained" / "vae-general"
# Measured 2026-12-02 (benchmarks/RESULTS.md, "The general VAE"): 28.88 dB, SSIM 0.876; bicubic 26.42 dB.
MIN_PSNR, MIN_SSIM, MIN_MARGIN_DB = 28.0, 0.85, 2.0


def test_shipped_vae_is_the_general_design_with_measured_latent_stats():
    vae = VideoVAE.from_pretrained(SHIPPED)
    size_mb = sum(f.stat().st_size for f in SHIPPED.iterdir()) / 1e6
    assert size_mb <= 40, f"{size_mb:.1f} MB"
    design = {k: v for k, v in vars(VAE_PRESETS["general"]()).items() if not k.startswith("latent_")}
    assert {k: v for k, v in vars(vae.config).items() if k in design} == design
    assert vae.config.latent_mean != [0.0] * 16 and vae.config.latent_std != [1.0] * 16  # measured, not defaults


def test_shipped_vae_is_the_default_and_beats_the_classic_codec(monkeypatch):
    monkeypatch.delenv("PATCHFLOW_VAE", raising=False)
    # The setting: the held-out clips (bikes.mp4, carphone_*.mp4), 17 frames at 128x128.
    report = eval_vae_report(frames=17, height=128, width=128, baseline="bicubic")
    assert report["model"] == str(SHIPPED)
    assert report["psnr"] >= MIN_PSNR and report["ssim"] >= MIN_SSIM, report
    # The same number of stored values as bicubic down- and up-sampling: a clear margin.
    assert report["psnr"] >= report["baseline_psnr"] + MIN_MARGIN_DB, report
