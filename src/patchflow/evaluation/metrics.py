"""Reconstruction metrics for videos: PSNR, SSIM, and a VAE evaluation over clips.

Videos may be user-facing numpy/torch `[T, H, W, 3]` (or one image `[H, W, 3]`),
uint8 or float, or model-facing torch tensors `[3, T, H, W]` / `[B, 3, T, H, W]`;
floats are taken to lie in [-1, 1] (`value_range` says otherwise). All are
compared in [0, 1].

    psnr(a, b)      10 log10(1 / MSE) over the whole video (inf when identical)
    ssim(a, b)      SSIM per frame with an 11x11 Gaussian window (sigma 1.5),
                    averaged over channels and frames; matches
                    skimage.metrics.structural_similarity(gaussian_weights=True,
                    use_sample_covariance=False, data_range=1)
    bicubic_baseline  the classic codec at the VAE's stored-value count, to compare against
    evaluate_vae    encode + decode clips, per clip: psnr, ssim, compression, timings
                    (and the baseline's psnr, ssim, compression)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _frames(video, value_range: tuple[float, float]) -> torch.Tensor:
    """Any supported video layout -> float64 frames `[N, 3, H, W]` in [0, 1]."""
    channels_first_ok = isinstance(video, torch.Tensor)  # numpy arrays are user videos: channels last
    x = torch.from_numpy(video) if isinstance(video, np.ndarray) else video
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor video, got {type(video).__name__}")
    x = x.detach().cpu()
    if x.ndim in (3, 4) and x.shape[-1] == 3:  # [H, W, 3] or [T, H, W, 3]
        x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)  # (T, 3, H, W)
    elif channels_first_ok and x.ndim in (4, 5) and x.shape[-4] == 3:  # [3, T, H, W] or [B, 3, T, H, W]
        x = x.reshape(-1, *x.shape[-4:]).transpose(1, 2).flatten(0, 1)  # (B*T, 3, H, W)
    else:
        raise ValueError(f"expected a video [T, H, W, 3], [3, T, H, W] or [B, 3, T, H, W], got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.double() / 255.0
    if not x.is_floating_point():
        raise TypeError(f"expected uint8 or float pixels, got {x.dtype}")
    lo, hi = value_range
    return (x.double() - lo) / (hi - lo)


def _pair(a, b, value_range: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _frames(a, value_range), _frames(b, value_range)
    if x.shape != y.shape:
        raise ValueError(f"videos differ in shape: {tuple(x.shape)} vs {tuple(y.shape)} (as [frames, 3, H, W])")
    return x, y


def psnr(a, b, value_range: tuple[float, float] = (-1.0, 1.0)) -> float:
    """PSNR in dB of two videos over all their pixels; `inf` when they are identical."""
    x, y = _pair(a, b, value_range)
    mse = (x - y).pow(2).mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-g.pow(2) / (2 * sigma * sigma))
    return g / g.sum()


def ssim_frames(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11,
                sigma: float = 1.5) -> torch.Tensor:
    """Differentiable SSIM of frame batches `[N, C, H, W]` -> `[N]` (mean over channels and valid positions).

    Frames smaller than the window use a smaller odd window. Constants as in
    Wang et al. 2004 (K1 = 0.01, K2 = 0.03).
    """
    c, h, w = x.shape[1:]
    size = min(window, h - (h % 2 == 0), w - (w % 2 == 0))  # largest odd window that fits
    g = _gaussian_window(size, sigma, x.dtype, x.device)
    gh, gw = g.view(1, 1, size, 1).repeat(c, 1, 1, 1), g.view(1, 1, 1, size).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, "valid" region only
        return F.conv2d(F.conv2d(t, gh, groups=c), gw, groups=c)  # (N, C, H-size+1, W-size+1)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def ssim(a, b, value_range: tuple[float, float] = (-1.0, 1.0)) -> float:
    """Mean SSIM over the frames of two videos (1.0 when identical)."""
    x, y = _pair(a, b, value_range)
    return ssim_frames(x, y).mean().item()


# ---------------------------------------------------------------- the classic baseline
BASELINES = ("bicubic",)  # pure frame dropping is not one: at 48x it would keep under one frame in 17


def bicubic_baseline_size(frames: int, height: int, width: int, ft: int, fs: int,
                          channels: int) -> tuple[int, int, int]:
    """`(T', h, w)`: the frames and size the bicubic baseline keeps so that it stores about as many
    values, `3 T' h w`, as a VAE latent `C T' (H/fs) (W/fs)`.

    T' = 1 + (T-1)/ft is the VAE's (frames 0, ft, 2ft, ...); h x w keeps the aspect ratio and is the
    floor/ceil pair of `(H, W) * sqrt(C/3) / fs` whose count is nearest the latent's (never larger
    than the input: when C/3 > fs^2 the baseline stores fewer values than the latent).
    """
    if frames < 1 or (frames - 1) % ft:
        raise ValueError(f"frames must be 1 + {ft}k for a temporal factor of {ft}, got {frames}")
    if min(height, width, ft, fs, channels) < 1:
        raise ValueError(f"sizes and factors must be >= 1, got {height}x{width}, ft={ft}, fs={fs}, C={channels}")
    target = channels * (height / fs) * (width / fs) / 3  # pixels per kept frame: 3 h w = C H' W'
    scale = math.sqrt(target / (height * width))
    sides = [sorted({min(n, max(1, math.floor(n * scale))), min(n, max(1, math.ceil(n * scale)))})
             for n in (height, width)]
    h, w = min(((h, w) for h in sides[0] for w in sides[1]), key=lambda hw: (abs(hw[0] * hw[1] - target), hw))
    return 1 + (frames - 1) // ft, h, w


def bicubic_baseline(video: np.ndarray, ft: int, fs: int, channels: int) -> np.ndarray:
    """Classic compression at a VAE's budget: uint8 `[T, H, W, 3]` -> its reconstruction, same shape.

    For a VAE with factors ft x fs x fs and C latent channels (it stores C x T' x H/fs x W/fs
    values). Stores 3 x T' x h x w floats (`bicubic_baseline_size`): frames 0, ft, 2ft, ...,
    each bicubic-downsampled (antialiased) to h x w. Decodes by bicubic upsampling back to H x W
    and linear interpolation in time between neighbouring kept frames. For 4x8x8x16 (48x) at
    17x128x128: 5 frames of 37x37 (4107 values per frame vs 4096 in the latent).
    """
    from patchflow.data.io import check_video

    video = check_video(video)
    frames, height, width, _ = video.shape
    kept, h, w = bicubic_baseline_size(frames, height, width, ft, fs, channels)
    x = torch.from_numpy(video[::ft]).permute(0, 3, 1, 2).double()  # (T', 3, H, W)
    stored = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)  # (T', 3, h, w)
    up = F.interpolate(stored, size=(height, width), mode="bicubic", align_corners=False)  # (T', 3, H, W)
    i = torch.arange(frames)
    before, after = i // ft, (i // ft + 1).clamp(max=kept - 1)  # the kept frames around frame i
    frac = ((i % ft) / ft).double().view(-1, 1, 1, 1)  # (T, 1, 1, 1)
    out = up[before] * (1 - frac) + up[after] * frac  # (T, 3, H, W)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # (T, H, W, 3)


# ---------------------------------------------------------------- evaluating a VAE
def _load_clip(item, frames: int, height: int, width: int) -> tuple[str, np.ndarray]:
    """A path, a uint8 video or a (name, uint8 video) pair -> (name, uint8 [frames, height, width, 3]),
    centre-cropped and resized."""
    from patchflow.data.io import read_video, resize_video

    if isinstance(item, (str, os.PathLike)):
        name = os.path.basename(os.fspath(item))
        video, _ = read_video(item, num_frames=frames)
    else:
        name, video = item if isinstance(item, tuple) else ("video", item)
        video = np.asarray(video)
        if video.ndim == 3:
            video = video[None]
    if video.shape[0] < frames:
        raise ValueError(f"{name} has {video.shape[0]} frames, fewer than the {frames} asked for")
    return name, resize_video(video[:frames], height, width, mode="crop")


@torch.no_grad()
def evaluate_vae(vae, paths_or_videos: Sequence, frames: int = 17, height: int = 128, width: int = 128,
                 device: str | torch.device = "cpu", baseline: str | None = None,
                 on_clip: Callable[[str, np.ndarray, np.ndarray, np.ndarray | None], None] | None = None,
                 ) -> list[dict]:
    """Reconstruct each clip with `vae` (posterior mean) and measure it.

    paths_or_videos: video file paths and/or uint8 `[T, H, W, 3]` arrays. Each
    clip's first `frames` frames are centre-cropped and resized to
    `height x width`. Returns one dict per clip: name, frames, height, width,
    psnr (dB), ssim, compression (pixel values / latent values), encode_s, decode_s;
    with `baseline="bicubic"` also baseline_psnr, baseline_ssim, baseline_compression
    and baseline_shape `[3, T', h, w]` of `bicubic_baseline` at this VAE's budget.
    on_clip(name, input, reconstruction, baseline or None), all uint8 `[T, H, W, 3]`,
    is called for each clip (to show them).
    """
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")
    vae.check_frames(frames, name="frames"), vae.check_size(height, width)  # before reading anything
    vae = vae.to(device).eval()
    results = []
    for item in paths_or_videos:
        name, video = _load_clip(item, frames, height, width)
        x = torch.from_numpy(video).to(device).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0  # (1, 3, T, H, W)
        t0 = time.perf_counter()
        z = vae.encode(x).mode()
        _sync(device)
        t1 = time.perf_counter()
        recon = vae.decode(z).clamp(-1, 1)
        _sync(device)
        t2 = time.perf_counter()
        out = ((recon[0].permute(1, 2, 3, 0) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()  # (T, H, W, 3)
        row = {
            "name": name, "frames": frames, "height": height, "width": width,
            "psnr": psnr(video, out), "ssim": ssim(video, out),
            "compression": x.numel() / z.numel(), "encode_s": t1 - t0, "decode_s": t2 - t1,
        }
        base = None
        if baseline is not None:
            c = vae.config
            base = bicubic_baseline(video, c.ft, c.fs, c.latent_channels)
            kept, h, w = bicubic_baseline_size(frames, height, width, c.ft, c.fs, c.latent_channels)
            row.update(baseline_psnr=psnr(video, base), baseline_ssim=ssim(video, base),
                       baseline_compression=video.size / (3 * kept * h * w), baseline_shape=[3, kept, h, w])
        if on_clip is not None:
            on_clip(name, video, out, base)
        results.append(row)
    return results


def _sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def format_results(results: list[dict]) -> str:
    """A plain-text table of `evaluate_vae` results with a mean row (for the CLI)."""
    head = f"{'clip':<28} {'psnr':>7} {'ssim':>6} {'ratio':>6} {'enc s':>7} {'dec s':>7}"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r['name'][:28]:<28} {r['psnr']:7.2f} {r['ssim']:6.3f} {r['compression']:6.1f} "
                    f"{r['encode_s']:7.2f} {r['decode_s']:7.2f}")
    if len(results) > 1:
        mean = {k: float(np.mean([r[k] for r in results])) for k in ("psnr", "ssim", "encode_s", "decode_s")}
        rows.append(f"{'mean':<28} {mean['psnr']:7.2f} {mean['ssim']:6.3f} {results[0]['compression']:6.1f} "
                    f"{mean['encode_s']:7.2f} {mean['decode_s']:7.2f}")
    if results and "baseline_psnr" in results[0]:  # the baseline's columns, beside the VAE's
        rows[0] += f"  {'base psnr':>9} {'b.ssim':>6} {'b.ratio':>7}"
        rows[1] = "-" * len(rows[0])
        for i, r in enumerate(results):
            rows[2 + i] += f"  {r['baseline_psnr']:9.2f} {r['baseline_ssim']:6.3f} {r['baseline_compression']:7.1f}"
        if len(results) > 1:
            rows[-1] += (f"  {np.mean([r['baseline_psnr'] for r in results]):9.2f} "
                         f"{np.mean([r['baseline_ssim'] for r in results]):6.3f} "
                         f"{results[0]['baseline_compression']:7.1f}")
        _, kept, h, w = results[0]["baseline_shape"]
        rows.append(f"base = bicubic baseline: keeps {kept} of {results[0]['frames']} frames at {h}x{w} "
                    f"(of {results[0]['height']}x{results[0]['width']}), bicubic up, linear in time")
    return "\n".join(rows)

