"""Causal 3D video VAE: pixels `[B, 3, T, H, W]` <-> latents `[B, C, T', H', W']`.

`T' = 1 + (T - 1) / ft`, `H' = H / fs`, `W' = W / fs`. The first frame is
encoded on its own, so an image is a 1-frame video and one VAE serves both.
Long or large videos are processed in time chunks with causal conv caches
(exact) and in overlapping spatial tiles with linear blending (approximate),
see `enable_tiling`. The layers live in `vae_blocks.py`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import nn

from patchflow.models.vae_blocks import (
    CONVS,
    Decoder,
    Encoder,
    initialize_weights,
    set_streaming,
)
from patchflow.models.sizes import check_frames, check_side, check_size, frame_steps, latent_frames
from patchflow.weights import load_component, save_component


@dataclass
class VAEConfig:
    RENAMED: ClassVar[dict[str, str]] = {"patch_size": "pixel_fold"}  # old config.json keys (weights.config_from_dict)
    ft: int = 4  # temporal compression: T' = 1 + (T-1)/ft; one of 1, 2, 4
    fs: int = 8  # spatial compression: H' = H/fs; one of 4, 8, 16
    latent_channels: int = 16  # C, 4..32; 16 as in Wan/HunyuanVideo at 4x8x8
    base_channels: int = 64  # width of the first level
    channel_mults: tuple[int, ...] = (1, 2)  # width multiplier per level; levels-1 = log2(fs/pixel_fold)
    num_res_blocks: int = 2  # residual blocks per encoder level (decoder uses one more)
    pixel_fold: int = 4  # p x p pixel blocks folded into channels first (space-to-depth; not the DiT's
                         # patch_size); 4 makes a 2-core CPU fast enough to train
    norm: str = "rms"  # "rms" (per-position, seam-free tiling) or "group" (GroupNorm per frame)
    shortcut: bool = False  # DC-AE parameter-free space-to-channel path around encoder and decoder
    conv: str = "3d"  # "3d" (3x3x3 causal convs) or "factorized" ((1,3,3) then causal (3,1,1): 12 taps, not 27)
    logvar_init: float = -4.0  # initial posterior log-variance (bias); -10 keeps fine detail out of the sampling noise
    latent_mean: list[float] = field(default_factory=list)  # per channel, empty = zeros; see measure_latent_stats
    latent_std: list[float] = field(default_factory=list)  # per channel, empty = ones
    latent_whiten: list = field(default_factory=list)  # C x C matrix applied after mean/std (decorrelates); empty = none
    whiten_latents: bool = False  # the VAE stage measures and stores latent_whiten (measure_latent_whitening)

    def __post_init__(self) -> None:
        c = self.latent_channels
        if self.ft not in (1, 2, 4):
            raise ValueError(f"ft must be 1, 2 or 4, got {self.ft}")
        if self.fs not in (4, 8, 16):
            raise ValueError(f"fs must be 4, 8 or 16, got {self.fs}")
        if not 4 <= c <= 32:
            raise ValueError(f"latent_channels must be in 4..32, got {c}")
        if self.pixel_fold not in (1, 2, 4) or self.fs % self.pixel_fold:
            raise ValueError(f"pixel_fold must be 1, 2 or 4 and divide fs={self.fs}, got {self.pixel_fold}")
        downs = int(math.log2(self.fs // self.pixel_fold))
        if len(self.channel_mults) != downs + 1:
            raise ValueError(f"fs={self.fs} with pixel_fold={self.pixel_fold} needs {downs} downsamplings, "
                             f"so {downs + 1} channel_mults; got {len(self.channel_mults)}")
        if self.conv not in CONVS:
            raise ValueError(f"conv must be one of {CONVS}, got {self.conv!r}")
        if self.base_channels < 1 or self.num_res_blocks < 1:
            raise ValueError("base_channels and num_res_blocks must be >= 1")
        self.latent_mean = [float(v) for v in self.latent_mean] or [0.0] * c
        self.latent_std = [float(v) for v in self.latent_std] or [1.0] * c
        if len(self.latent_mean) != c or len(self.latent_std) != c:
            raise ValueError(f"latent_mean/latent_std need {c} values, got {len(self.latent_mean)}/{len(self.latent_std)}")
        if min(self.latent_std) <= 0:
            raise ValueError(f"latent_std must be positive, got {self.latent_std}")
        self.latent_whiten = [[float(v) for v in row] for row in self.latent_whiten]
        if self.latent_whiten and (len(self.latent_whiten) != c or any(len(r) != c for r in self.latent_whiten)):
            raise ValueError(f"latent_whiten must be a {c} x {c} matrix, got {len(self.latent_whiten)} rows")
        if self.latent_whiten and abs(torch.linalg.det(torch.tensor(self.latent_whiten, dtype=torch.float64))) < 1e-12:
            raise ValueError("latent_whiten must be invertible (denormalize undoes it)")


VAE_PRESETS: dict[str, Callable[[], VAEConfig]] = {
    # Tests: 0.47M parameters, milliseconds per call on CPU.
    "tiny": lambda: VAEConfig(ft=4, fs=4, latent_channels=4, base_channels=16, channel_mults=(1, 2),
                              num_res_blocks=1, pixel_fold=2),
    # Small models on the built-in world: 8 channels per 4x4x4 block (24x compression).
    "4x4x4x8": lambda: VAEConfig(ft=4, fs=4, latent_channels=8, base_channels=48, channel_mults=(1, 2),
                                 num_res_blocks=1, pixel_fold=2),
    # Wan/HunyuanVideo ratio, 48x compression: 9.7M parameters, patch 4 then one spatial halving.
    "4x8x8x16": lambda: VAEConfig(ft=4, fs=8, latent_channels=16, base_channels=64, channel_mults=(1, 2),
                                  num_res_blocks=2, pixel_fold=4),
    # The shipped general VAE's design (configs/vae-general.toml): 4x8x8x16 with the DC-AE shortcut,
    # GroupNorm and factorized convs, 4.8M parameters; at equal CPU minutes 27.2 dB on the held-out
    # clips where 4x8x8x16 reached 21.1 dB (benchmarks/RESULTS.md, "The general VAE").
    "general": lambda: VAEConfig(ft=4, fs=8, latent_channels=16, base_channels=64, channel_mults=(1, 2),
                                 num_res_blocks=2, pixel_fold=4, norm="group", shortcut=True, logvar_init=-10.0,
                                 conv="factorized"),
}


class LatentDist:
    """Diagonal Gaussian over latents; `params` is `[B, 2C, T', H', W']` (mean, log-variance)."""

    def __init__(self, params: torch.Tensor) -> None:
        self.mean, logvar = params.chunk(2, dim=1)  # each (B, C, T', H', W')
        self.logvar = logvar.clamp(-30.0, 20.0)  # keeps exp() finite early in training
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), summed over C, T', H', W' -> `[B]`."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3, 4))


def _tile_spans(n: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Start/end of overlapping tiles covering `0..n`; the last tile is shifted to end at `n`."""
    if n <= tile:
        return [(0, n)]
    starts = list(range(0, n - tile, tile - overlap)) + [n - tile]
    return [(s, s + tile) for s in starts]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D blend weights of one tile along one axis.

    Along an edge shared with a neighbour tile, the outer quarter of the
    overlap gets weight 0 (those outputs lack context beyond the tile edge and
    are the least accurate), the middle half ramps linearly to 1. The
    neighbour covers the zeroed band with full weight, so weights never sum to 0.
    """
    w = torch.ones(length)
    dead = overlap // 4
    band = overlap - 2 * dead
    edge = torch.cat([torch.zeros(dead), (torch.arange(band) + 0.5) / band])  # rises from 0 to ~1
    if overlap > 0 and not at_start:
        w[: dead + band] = edge
    if overlap > 0 and not at_end:
        w[-(dead + band):] = torch.minimum(w[-(dead + band):], edge.flip(0))
    return w


class VideoVAE(nn.Module):
    """Causal 3D VAE. `encode(video) -> LatentDist`, `decode(z) -> video`, `forward -> (recon, dist)`."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = c = config
        args = (c.latent_channels, c.base_channels, tuple(c.channel_mults), c.num_res_blocks,
                int(math.log2(c.ft)), c.pixel_fold, c.norm, c.shortcut, c.conv)
        self.encoder, self.decoder = Encoder(*args, logvar_init=c.logvar_init), Decoder(*args)
        initialize_weights(self)
        self.register_buffer("latent_mean", torch.tensor(c.latent_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latent_std", torch.tensor(c.latent_std).view(1, -1, 1, 1, 1), persistent=False)
        whiten = torch.tensor(c.latent_whiten) if c.latent_whiten else torch.eye(c.latent_channels)
        self.register_buffer("latent_whiten", whiten, persistent=False)
        self.register_buffer("latent_unwhiten", torch.linalg.inv(whiten.double()).float(), persistent=False)
        self.tiling: dict | None = None

    # ----- shapes and checks (sizes.py, with this VAE's ft and fs) -----
    def valid_frame_counts(self, max_frames: int, pt: int = 1) -> list[int]:
        """Frame counts the VAE takes (with a DiT temporal patch `pt`), up to `max_frames`: 1, 1 + ft, ..."""
        first, step = frame_steps(self.config.ft, pt)
        return list(range(first, max_frames + 1, step))

    def check_frames(self, num_frames: object, pt: int = 1, name: str = "num_frames") -> int:
        return check_frames(num_frames, self.config.ft, pt, name)

    def check_side(self, n: object, p: int = 1, name: str = "height") -> int:
        return check_side(n, self.config.fs, p, name)

    def check_size(self, height: object, width: object, patch: tuple[int, int] = (1, 1),
                   names: tuple[str, str] = ("height", "width")) -> tuple[int, int]:
        return check_size(height, width, self.config.fs, patch, names)

    def latent_frames(self, num_frames: int) -> int:
        return latent_frames(num_frames, self.config.ft)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """`(C, T', H', W')` for a `frames x height x width` video (checked)."""
        t = self.latent_frames(frames)
        height, width = self.check_size(height, width)
        c = self.config
        return (c.latent_channels, t, height // c.fs, width // c.fs)

    def _check_video(self, video: torch.Tensor) -> torch.Tensor:
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"video must be a torch.Tensor [B, 3, T, H, W], got {type(video).__name__}")
        if video.dtype == torch.uint8:
            raise TypeError("got a uint8 video; convert to float in [-1, 1] first: video.float() / 127.5 - 1 "
                            "(and permute [T, H, W, 3] frames to [B, 3, T, H, W])")
        if not video.is_floating_point():
            raise TypeError(f"video must be a float tensor in [-1, 1], got dtype {video.dtype}")
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, T, H, W] (use video[None] for one clip, "
                             f"video[:, :, None] for images); got shape {tuple(video.shape)}")
        self.latent_shape(*video.shape[2:])
        lo, hi = video.min().item(), video.max().item()
        if lo < -1.05 or hi > 1.05:  # small overshoot from resizing filters is fine
            raise ValueError(f"video values must lie in [-1, 1]; got min {lo:.3g}, max {hi:.3g} "
                             f"(for [0, 1] input use x * 2 - 1, for [0, 255] use x / 127.5 - 1)")
        return video.to(self.encoder.conv_in.conv.weight.dtype)

    def _check_latents(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config.latent_channels
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise TypeError(f"latents must be a float torch.Tensor [B, {c}, T', H', W']")
        if z.ndim != 5 or z.shape[1] != c:
            raise ValueError(f"latents must be [B, {c}, T', H', W']; got shape {tuple(z.shape)}")
        return z.to(self.decoder.conv_in.conv.weight.dtype)

    # ----- encode / decode -----
    def encode(self, video: torch.Tensor) -> LatentDist:
        """`[B, 3, T, H, W]` float in [-1, 1], `T = 1 + ft k`, H and W divisible by fs
        -> `LatentDist` over `[B, C, 1 + (T-1)/ft, H/fs, W/fs]`."""
        video = self._check_video(video)
        if self.tiling is None:
            return LatentDist(self.encoder(video))
        t = self.tiling
        return LatentDist(self._tiled(video, self.encoder, t["tile_size"], t["overlap"], t["tile_frames"],
                                      scale=1.0 / self.config.fs, out_channels=2 * self.config.latent_channels))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """`[B, C, T', H', W']` -> `[B, 3, 1 + (T'-1) ft, H' fs, W' fs]` (roughly in [-1, 1], not clamped)."""
        z = self._check_latents(z)
        if self.tiling is None:
            return self.decoder(z)
        t, fs = self.tiling, self.config.fs
        tile = None if t["tile_size"] is None else t["tile_size"] // fs
        return self._tiled(z, self.decoder, tile, t["overlap"] // fs, t["tile_frames"] // self.config.ft,
                           scale=float(fs), out_channels=3)

    def forward(self, video: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None,
                latent_noise: float = 0.0) -> tuple[torch.Tensor, LatentDist]:
        """Encode, sample (or take the mode), decode. `latent_noise` > 0 adds Gaussian noise of that std
        to the latent in the DiT's (normalised) units before decoding, so a decoder trained this way
        tolerates a diffusion model's errors (as LTX-Video trains its decoder)."""
        dist = self.encode(video)
        z = dist.sample(generator) if sample else dist.mode()
        if latent_noise > 0:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z = self.denormalize(self.normalize(z) + latent_noise * noise)
        return self.decode(z), dist

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> roughly unit-variance per channel, decorrelated by `latent_whiten` if set (what the DiT sees)."""
        z = (z - self.latent_mean) / self.latent_std
        if self.config.latent_whiten:
            z = torch.einsum("dc,bc...->bd...", self.latent_whiten.to(z.dtype), z)
        return z

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.latent_whiten:
            z = torch.einsum("dc,bc...->bd...", self.latent_unwhiten.to(z.dtype), z)
        return z * self.latent_std + self.latent_mean

    def set_latent_stats(self, mean: list[float], std: list[float], whiten: list | None = None) -> None:
        """Store latent statistics (from `measure_latent_stats` or `measure_latent_whitening`)
        in config and buffers; `whiten=None` keeps the per-channel normalisation only. Checked by
        VAEConfig (counts, positive stds, an invertible C x C whitening) before anything changes."""
        if not len(mean) or not len(std):
            raise ValueError(f"need {self.config.latent_channels} means and stds, got {len(mean)} and {len(std)}")
        whiten = [] if whiten is None else torch.as_tensor(whiten, dtype=torch.float32).tolist()
        self.config = replace(self.config, latent_mean=list(mean), latent_std=list(std),
                                          latent_whiten=whiten)
        c = self.config
        w = torch.tensor(c.latent_whiten) if c.latent_whiten else torch.eye(c.latent_channels)
        self.latent_mean.copy_(torch.tensor(c.latent_mean).view(1, -1, 1, 1, 1))
        self.latent_std.copy_(torch.tensor(c.latent_std).view(1, -1, 1, 1, 1))
        self.latent_whiten.copy_(w)
        self.latent_unwhiten.copy_(torch.linalg.inv(w.double()).float())

    # ----- tiling -----
    def enable_tiling(self, tile_frames: int = 16, tile_size: int | None = 256, overlap: int = 64) -> None:
        """Process videos in time chunks of `tile_frames` frames and spatial tiles of
        `tile_size` pixels overlapping by `overlap` (None = no spatial tiling).

        Time chunks are exact (causal conv caches); spatial tiles are blended
        linearly over the overlap. Memory then scales with one chunk of one tile.
        """
        ft, fs = self.config.ft, self.config.fs
        if tile_frames < ft or tile_frames % ft:
            raise ValueError(f"tile_frames must be a positive multiple of ft={ft}, got {tile_frames}")
        if tile_size is not None:
            if tile_size < 2 * fs or tile_size % fs or overlap % fs:
                raise ValueError(f"tile_size ({tile_size}) and overlap ({overlap}) must be multiples of fs={fs}, "
                                 f"tile_size at least {2 * fs}")
            if not 0 <= overlap <= tile_size // 2:
                raise ValueError(f"overlap must be in [0, tile_size / 2]; got {overlap} with tile_size {tile_size}")
        self.tiling = {"tile_frames": tile_frames, "tile_size": tile_size, "overlap": overlap}

    def disable_tiling(self) -> None:
        self.tiling = None

    def _stream(self, net: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """Run `net` over time chunks (frame 0 alone, then `chunk` frames) with causal caches."""
        set_streaming(net, True)
        try:
            bounds = [0, 1] + list(range(1 + chunk, x.shape[2], chunk)) + [x.shape[2]]
            outs = [net(x[:, :, a:b]) for a, b in itertools.pairwise(bounds) if b > a]
        finally:
            set_streaming(net, False)
        return torch.cat(outs, dim=2)  # (B, C_out, T_out, H_out, W_out)

    def _tiled(self, x: torch.Tensor, net: nn.Module, tile: int | None, overlap: int, chunk: int,
               scale: float, out_channels: int) -> torch.Tensor:
        """Stream `net` over spatial tiles of `x`, blending outputs (sizes scaled by `scale`) in the overlaps."""
        H, W = x.shape[3:]
        if tile is None:
            return self._stream(net, x, chunk)
        out = None
        weight = x.new_zeros(round(H * scale), round(W * scale))
        for y0, y1 in _tile_spans(H, tile, overlap):
            for x0, x1 in _tile_spans(W, tile, overlap):
                y = self._stream(net, x[:, :, :, y0:y1, x0:x1], chunk)  # (B, C_out, T_out, h, w)
                if out is None:
                    out = y.new_zeros(y.shape[0], out_channels, y.shape[2], *weight.shape)
                o = round(overlap * scale)
                ys, xs = slice(round(y0 * scale), round(y1 * scale)), slice(round(x0 * scale), round(x1 * scale))
                w = (_ramp(y.shape[3], o, y0 == 0, y1 == H)[:, None] * _ramp(y.shape[4], o, x0 == 0, x1 == W)[None])
                w = w.to(y)
                out[:, :, :, ys, xs] += y * w
                weight[ys, xs] += w
        return out.div_(weight)  # in place: the output can be GBs

    # ----- saving -----
    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Write `config.json` + `model.safetensors` to `directory` (optionally cast, e.g. bfloat16)."""
        save_component(directory, self.config, self.state_dict(), dtype=dtype)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> VideoVAE:
        config, state = load_component(directory, VAEConfig)
        vae = cls(config)
        vae.load_state_dict({k: v.float() for k, v in state.items()})
        return vae.to(device).eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@torch.no_grad()
def _latent_moments(vae: VideoVAE, videos: Iterable[torch.Tensor], sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and covariance (C, C) of the unnormalised latents of `videos`, in float64."""
    device = next(vae.parameters()).device
    total, s1, s2 = 0, None, None
    for video in videos:
        video = video[None] if video.ndim == 4 else video
        dist = vae.encode(video.to(device))
        z = (dist.sample() if sample else dist.mode()).double().transpose(0, 1).flatten(1)  # (C, N)
        s1 = z.sum(1) if s1 is None else s1 + z.sum(1)
        s2 = z @ z.T if s2 is None else s2 + z @ z.T
        total += z.shape[1]
    if total == 0:
        raise ValueError("measuring latent statistics needs at least one video, got none")
    mean = s1 / total
    return mean, s2 / total - torch.outer(mean, mean)


def measure_latent_stats(vae: VideoVAE, videos: Iterable[torch.Tensor],
                         sample: bool = False) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the (unnormalised) latents of `videos`.

    `videos`: iterable of `[B, 3, T, H, W]` or `[3, T, H, W]` float tensors in
    [-1, 1]. Uses the posterior mean (or a sample with `sample=True`). Put the
    result in `config.latent_mean/latent_std` so `vae.normalize` yields unit variance.
    """
    mean, cov = _latent_moments(vae, videos, sample)
    return mean.tolist(), cov.diagonal().clamp_min(1e-12).sqrt().tolist()


def measure_latent_whitening(vae: VideoVAE, videos: Iterable[torch.Tensor], sample: bool = False,
                             eps: float = 0.01) -> tuple[list[float], list[float], list[list[float]]]:
    """Per-channel mean and std plus a ZCA whitening matrix `W = U diag((l + eps)^-1/2) U^T`
    of the per-channel-normalised latents (eigenvalues `l`, eigenvectors `U` of their correlation).

    Why: a VAE whose channels are near-copies of each other (a DC-AE shortcut makes
    them block-mean colours) puts most latent variance in a few directions; per-channel
    scaling leaves fine detail (edges, shape) in directions with variance ~0.01, which
    the diffusion noise drowns at all but the last steps. Whitening gives every
    direction unit variance; `eps` caps the gain on directions that are nearly empty.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    mean, cov = _latent_moments(vae, videos, sample)
    std = cov.diagonal().clamp_min(1e-12).sqrt()
    lam, u = torch.linalg.eigh(cov / torch.outer(std, std))
    w = u @ torch.diag((lam.clamp_min(0) + eps).rsqrt()) @ u.T
    return mean.tolist(), std.tolist(), w.tolist()
