"""Tests of the causal 3D video VAE and its loss (tiny configs, CPU)."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from torch import nn

from patchflow.evaluation.metrics import psnr
from patchflow.models.sizes import check_frames, nearest_valid_frames
from patchflow.models.vae import (VAE_PRESETS, LatentDist, VAEConfig, VideoVAE, measure_latent_stats,
                                  measure_latent_whitening)
from patchflow.training.vae_loss import VAELoss, VAELossConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def random_vae(norm: str = "rms", seed: int = 0, conv: str = "3d") -> VideoVAE:
    """Tiny VAE whose zero-initialised layers get small random weights, so every path carries signal."""
    torch.manual_seed(seed)
    config = dataclasses.replace(VAE_PRESETS["tiny"](), norm=norm, conv=conv)
    vae = VideoVAE(config).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            # Zero layers, and the identity-initialised temporal halves of factorized convs, so
            # every conv mixes frames and causality and streaming are really exercised.
            if p.ndim > 1 and (p.abs().max() == 0 or re.search(r"conv[12]\.temporal\.", name)):
                p.normal_(0.0, 0.02)
    return vae


def smooth_video(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """`[1, 3, t, h, w]` in [-1, 1]: blurred noise, closer to real images than white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, t, h, w, generator=g) * 2 - 1
    return (nn.functional.avg_pool3d(x, (1, 5, 5), 1, (0, 2, 2)) * 3).clamp(-1, 1)


def moving_pattern(t: int, h: int, w: int) -> torch.Tensor:
    """`[1, 3, t, h, w]`: smooth colour waves drifting over time (learnable in a few steps)."""
    tt, yy, xx = (torch.arange(n, dtype=torch.float32) for n in (t, h, w))
    tt, yy, xx = tt.view(t, 1, 1), yy.view(1, h, 1), xx.view(1, 1, w)
    r = torch.sin(2 * math.pi * (xx - 1.5 * tt) / 40)
    g = torch.cos(2 * math.pi * (yy + tt) / 48)
    b = torch.sin(2 * math.pi * (xx + yy) / 64 + 0.3 * tt)
    return 0.9 * torch.stack(torch.broadcast_tensors(r, g, b))[None]


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize("t,h,w", [(1, 16, 16), (5, 16, 24), (9, 32, 16), (13, 24, 40)])
def test_shapes_images_and_videos(t, h, w):
    vae = random_vae()
    x = smooth_video(t, h, w)
    with torch.no_grad():
        dist = vae.encode(x)
        recon = vae.decode(dist.sample())
    assert tuple(dist.mean.shape[1:]) == vae.latent_shape(t, h, w) == (4, 1 + (t - 1) // 4, h // 4, w // 4)
    assert recon.shape == x.shape


@pytest.mark.parametrize("name", list(VAE_PRESETS))
def test_presets_build_and_round_trip_shapes(name):
    config = VAE_PRESETS[name]()
    vae = VideoVAE(config).eval()
    fs, ft = config.fs, config.ft
    x = torch.zeros(2, 3, 1 + ft, 2 * fs, 3 * fs)
    with torch.no_grad():
        z = vae.encode(x).mode()
        assert z.shape == (2, config.latent_channels, 2, 2, 3)
        assert vae.decode(z).shape == x.shape
    assert vae.valid_frame_counts(9) == list(range(1, 10, ft))


# ---------------------------------------------------------------- causality and tiling
@pytest.mark.parametrize("norm,conv", [("rms", "3d"), ("group", "3d"), ("group", "factorized")])
def test_encoder_is_causal(norm, conv):
    vae = random_vae(norm, conv=conv)
    x = smooth_video(17, 16, 16)
    y = x.clone()
    y[:, :, 9:] = smooth_video(8, 16, 16, seed=1)  # change frames 9..16 -> latents 3, 4 may change
    with torch.no_grad():
        a, b = vae.encode(x).mean, vae.encode(y).mean
        image = vae.encode(x[:, :, :1]).mean
    assert torch.equal(a[:, :, :3], b[:, :, :3])
    assert (a[:, :, 3:] - b[:, :, 3:]).abs().max() > 1e-3
    torch.testing.assert_close(image, a[:, :, :1], atol=1e-6, rtol=0)  # an image = the first latent frame


@pytest.mark.parametrize("norm,conv", [("rms", "3d"), ("group", "3d"), ("group", "factorized")])
def test_decoder_is_causal(norm, conv):
    vae = random_vae(norm, conv=conv)
    z = torch.randn(1, 4, 5, 4, 4)
    z2 = z.clone()
    z2[:, :, 3:] += 1.0  # latents 0..2 decode to frames 0..8
    with torch.no_grad():
        a, b = vae.decode(z), vae.decode(z2)
    assert torch.equal(a[:, :, :9], b[:, :, :9])
    assert (a[:, :, 9:] - b[:, :, 9:]).abs().max() > 1e-3


@pytest.mark.parametrize("norm,conv", [("rms", "3d"), ("group", "3d"), ("group", "factorized")])
def test_temporal_chunks_are_exact(norm, conv):
    vae = random_vae(norm, conv=conv)
    x = smooth_video(21, 16, 24)
    with torch.no_grad():
        z, recon = vae.encode(x).mean, vae.decode(vae.encode(x).mean)
        vae.enable_tiling(tile_frames=4, tile_size=None)  # 1 + 5 chunks through the conv caches
        z_t, recon_t = vae.encode(x).mean, vae.decode(z)
    torch.testing.assert_close(z_t, z, atol=1e-5, rtol=0)
    torch.testing.assert_close(recon_t, recon, atol=1e-5, rtol=0)


def test_tile_blending_reproduces_a_pointwise_net():
    # Plain reference for the tiling arithmetic: with a net that mixes no pixels, tiles + blending is exact.
    vae = random_vae()
    x = torch.randn(1, 3, 5, 40, 60)  # 60 = 5 tiles of stride 8, the last one shifted by 4
    out = vae._tiled(x, nn.Identity(), tile=16, overlap=8, chunk=4, scale=1.0, out_channels=3)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_spatial_tiling_close_to_untiled():
    # Bound reached with random weights (receptive field ~38 px on 128 px tiles overlapping by 64 px):
    # max |tiled - untiled| < 0.05 on latents and pixels of magnitude ~1.
    vae = random_vae("rms")
    x = smooth_video(5, 160, 160)
    with torch.no_grad():
        z, recon = vae.encode(x).mean, vae.decode(vae.encode(x).mean)
        vae.enable_tiling(tile_frames=4, tile_size=128, overlap=64)
        z_t, recon_t = vae.encode(x).mean, vae.decode(z)
        vae.enable_tiling(tile_frames=4, tile_size=160, overlap=64)  # one tile = untiled (exact)
        torch.testing.assert_close(vae.encode(x).mean, z, atol=1e-5, rtol=0)
    assert z.abs().max() > 0.5 and recon.abs().max() > 0.5
    assert (z_t - z).abs().max() < 0.05
    assert (recon_t - recon).abs().max() < 0.05


# ---------------------------------------------------------------- bad input
def test_frame_and_size_rules_name_the_valid_values():
    vae = VideoVAE(VAE_PRESETS["tiny"]())  # ft = 4, fs = 4
    assert [vae.latent_frames(n) for n in (1, 5, 17)] == [1, 2, 5]
    assert [nearest_valid_frames(n, 4) for n in (0, 2, 3, 6, 7, 15, 16)] == [1, 1, 5, 5, 9, 17, 17]  # ties round up
    assert vae.valid_frame_counts(30, pt=2) == [5, 13, 21, 29]  # 2, 4, 6, 8 latent frames
    assert [nearest_valid_frames(n, 4, 2) for n in (1, 9, 10)] == [5, 13, 13]
    assert vae.check_frames(13) == 13 and vae.check_size(8, 12) == (8, 12) and vae.check_size(16, 8, (2, 2))
    with pytest.raises(ValueError, match=re.escape("num_frames must be 1 + 4k (1, 5, 9, 13, 17, ...) for the "
                                                   "causal VAE, got 16; nearest valid: 17")):
        vae.latent_frames(16)
    with pytest.raises(ValueError, match=re.escape("data.frames must be 5 + 8k (5, 13, 21, 29, 37, ...) for the "
                                                   "causal VAE and the DiT's temporal patch 2, got 9; nearest valid: 13")):
        vae.check_frames(9, pt=2, name="data.frames")
    with pytest.raises(ValueError, match=re.escape("width must be a multiple of 8 (8, 16, 24, ...) for the VAE (fs=4) "
                                                   "and the DiT's patch 2, got 12; nearest valid: 16")):
        vae.check_size(16, 12, (2, 2))
    for bad in (0, 2.0, True, "5"):
        with pytest.raises(ValueError, match="num_frames must be a positive int"):
            check_frames(bad, 4)


@pytest.mark.parametrize("shape,dtype,scale,error,message", [
    ((1, 3, 16, 16, 16), torch.float32, 1.0, ValueError, "num_frames must be 1 + 4k (1, 5, 9, 13, 17, ...) for the causal VAE, got 16; nearest valid: 17"),
    ((1, 3, 2, 16, 16), torch.float32, 1.0, ValueError, "num_frames must be 1 + 4k (1, 5, 9, 13, 17, ...) for the causal VAE, got 2; nearest valid: 1"),
    ((1, 3, 5, 30, 16), torch.float32, 1.0, ValueError, "height must be a multiple of 4 (4, 8, 12, ...) for the VAE (fs=4), got 30; nearest valid: 32"),
    ((1, 3, 5, 16, 2), torch.float32, 1.0, ValueError, "width must be a multiple of 4 (4, 8, 12, ...) for the VAE (fs=4), got 2; nearest valid: 4"),
    ((1, 3, 5, 16, 16), torch.uint8, 1.0, TypeError, "convert to float in [-1, 1]"),
    ((1, 3, 5, 16, 16), torch.int64, 1.0, TypeError, "float tensor"),
    ((1, 3, 5, 16, 16), torch.float32, 2.0, ValueError, "values must lie in [-1, 1]"),
    ((3, 5, 16, 16), torch.float32, 1.0, ValueError, "must be [B, 3, T, H, W]"),
    ((1, 4, 5, 16, 16), torch.float32, 1.0, ValueError, "must be [B, 3, T, H, W]"),
])
def test_bad_video_errors(shape, dtype, scale, error, message):
    vae = VideoVAE(VAE_PRESETS["tiny"]())
    x = (torch.linspace(-1, 1, torch.Size(shape).numel()).view(shape) * scale).to(dtype)
    with pytest.raises(error, match=re.escape(message)):
        vae.encode(x)


def test_small_overshoot_tolerated_and_bad_latents():
    vae = VideoVAE(VAE_PRESETS["tiny"]())
    vae.encode(torch.full((1, 3, 1, 8, 8), 1.04))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 8, 1, 2, 2))
    with pytest.raises(ValueError, match="multiple of ft=4"):
        vae.enable_tiling(tile_frames=6)
    with pytest.raises(ValueError, match="multiples of fs=4"):
        vae.enable_tiling(tile_size=30)
    with pytest.raises(ValueError, match="overlap must be"):
        vae.enable_tiling(tile_size=64, overlap=48)


@pytest.mark.parametrize("kwargs,message", [
    ({"ft": 3}, "ft must be"), ({"fs": 6}, "fs must be"), ({"latent_channels": 64}, "latent_channels"),
    ({"channel_mults": (1, 2, 4)}, "channel_mults"), ({"latent_mean": [0.0]}, "latent_mean"),
    ({"conv": "2d"}, "conv must be one of"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VAEConfig(**kwargs)


# ---------------------------------------------------------------- save/load, latent statistics
@pytest.mark.parametrize("conv", ["3d", "factorized"])
def test_save_load_round_trip(tmp_path, conv):
    vae = random_vae(conv=conv)
    vae.set_latent_stats([0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0])
    vae.save_pretrained(tmp_path / "vae")
    loaded = VideoVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == vae.config
    for (k, a), (k2, b) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = smooth_video(5, 16, 16)
    with torch.no_grad():
        assert torch.equal(vae.encode(x).mean, loaded.encode(x).mean)
        assert torch.equal(vae.normalize(vae.encode(x).mean), loaded.normalize(loaded.encode(x).mean))


def test_normalize_inverse_and_measured_stats():
    vae = random_vae()
    videos = [smooth_video(5, 16, 16, seed=s) for s in range(3)]
    mean, std = measure_latent_stats(vae, videos)
    vae.set_latent_stats(mean, std)
    with torch.no_grad():
        z = torch.cat([vae.encode(v).mean for v in videos], dim=2)
    zn = vae.normalize(z)
    torch.testing.assert_close(vae.denormalize(zn), z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(zn.mean(dim=(0, 2, 3, 4)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(zn.std(dim=(0, 2, 3, 4), correction=0), torch.ones(4), atol=1e-3, rtol=0)


def test_whitened_latents_are_decorrelated_and_invertible(tmp_path):
    vae = random_vae()
    videos = [smooth_video(5, 16, 16, seed=s) for s in range(3)]
    with torch.no_grad():
        z = torch.cat([vae.encode(v).mean for v in videos], dim=2)
    vae.set_latent_stats(*measure_latent_whitening(vae, videos, eps=1e-6))
    zn = vae.normalize(z)
    torch.testing.assert_close(vae.denormalize(zn), z, atol=1e-4, rtol=1e-4)
    flat = zn.transpose(0, 1).flatten(1)
    cov = torch.cov(flat, correction=0)
    torch.testing.assert_close(cov, torch.eye(4), atol=2e-3, rtol=0)  # unit variance, no correlation
    # Saved and loaded with the VAE; clearing it restores the per-channel normalisation.
    vae.save_pretrained(tmp_path / "vae")
    loaded = VideoVAE.from_pretrained(tmp_path / "vae")
    torch.testing.assert_close(loaded.normalize(z), zn)
    loaded.set_latent_stats(loaded.config.latent_mean, loaded.config.latent_std)
    assert loaded.config.latent_whiten == []
    torch.testing.assert_close(loaded.normalize(z), (z - loaded.latent_mean) / loaded.latent_std)


def test_latent_noise_perturbs_the_decoded_latent_only():
    vae = random_vae()
    vae.set_latent_stats([0.0] * 4, [2.0] * 4)
    x = smooth_video(5, 16, 16)
    with torch.no_grad():
        clean, dist = vae(x, sample=False)
        noisy, dist2 = vae(x, sample=False, generator=torch.Generator().manual_seed(0), latent_noise=0.5)
        again, _ = vae(x, sample=False, generator=torch.Generator().manual_seed(0), latent_noise=0.5)
        # The same draw as adding the noise by hand in the normalised (DiT) units:
        noise = torch.randn(dist.mode().shape, generator=torch.Generator().manual_seed(0))
        by_hand = vae.decode(vae.denormalize(vae.normalize(dist.mode()) + 0.5 * noise))
    assert torch.equal(dist.mean, dist2.mean)  # the posterior (and so the KL) is untouched
    assert not torch.allclose(clean, noisy) and torch.equal(noisy, again)
    torch.testing.assert_close(noisy, by_hand)
    with pytest.raises(ValueError, match="latent_noise must be >= 0"):
        VAELossConfig(latent_noise=-0.1)


def test_latent_whiten_checked():
    with pytest.raises(ValueError, match="4 x 4 matrix"):
        dataclasses.replace(VAE_PRESETS["tiny"](), latent_whiten=[[1.0, 0.0]])
    with pytest.raises(ValueError, match="invertible"):
        dataclasses.replace(VAE_PRESETS["tiny"](), latent_whiten=[[0.0] * 4] * 4)
    with pytest.raises(ValueError, match="eps"):
        measure_latent_whitening(random_vae(), [smooth_video(5, 16, 16)], eps=0)
    vae = random_vae()  # bad statistics change nothing, however far they got
    for mean, std, whiten in (([0.5] * 4, [2.0] * 4, [[0.0] * 4] * 4), ([0.5] * 4, [2.0] * 4, [[1.0, 0.0]]),
                              ([0.5] * 3, [2.0] * 4, None), ([0.5] * 4, [-1.0] * 4, None), ([], [], None)):
        with pytest.raises(ValueError):
            vae.set_latent_stats(mean, std, whiten)
        assert vae.config.latent_mean == [0.0] * 4 and vae.config.latent_whiten == []
        assert torch.equal(vae.latent_mean, torch.zeros(1, 4, 1, 1, 1))


def test_latent_dist():
    params = torch.cat([torch.randn(2, 4, 1, 2, 2), torch.zeros(2, 4, 1, 2, 2)], dim=1)
    d = LatentDist(params)
    assert torch.equal(d.mode(), params[:, :4]) and torch.equal(d.std, torch.ones(2, 4, 1, 2, 2))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(d.sample(g1), d.sample(g2))
    torch.testing.assert_close(d.kl(), 0.5 * params[:, :4].pow(2).sum(dim=(1, 2, 3, 4)))


# ---------------------------------------------------------------- loss and training
def test_loss_on_images_and_videos_and_discriminator():
    vae = random_vae()
    loss_fn = VAELoss(VAELossConfig(adv_start_step=0))
    for shape in [(2, 3, 1, 16, 16), (1, 3, 5, 24, 32)]:
        x = smooth_video(*shape[2:]).expand(shape).contiguous()
        recon, post = vae(x)
        loss, logs = loss_fn(x, recon, post, step=1, last_layer=vae.decoder.conv_out.conv.weight)
        loss_fn.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is None for p in loss_fn.parameters())  # the VAE step leaves the discriminator alone
        d_loss, d_logs = loss_fn.discriminator_loss(x, recon)
        d_loss.backward()
        assert loss.ndim == 0 and {"l1", "ssim", "kl", "g_adv", "adv_weight", "loss"} <= set(logs)
        assert all(isinstance(v, float) for v in {**logs, **d_logs}.values())
        assert all(p.grad.abs().sum() > 0 for p in loss_fn.parameters() if p.ndim > 1)
    assert not VAELoss().adversarial_active(10**6)
    with pytest.raises(RuntimeError, match="no discriminator"):
        VAELoss().discriminator_loss(x, x)


def test_tiny_vae_overfits_one_clip():
    torch.manual_seed(0)
    x = moving_pattern(9, 32, 32)
    vae = VideoVAE(VAE_PRESETS["tiny"]())
    loss_fn = VAELoss(VAELossConfig(adv_start_step=40))
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    opt_d = torch.optim.AdamW(loss_fn.parameters(), lr=1e-4)
    with torch.no_grad():
        psnr_start = psnr(x, vae(x, sample=False)[0].clamp(-1, 1))
    losses = []
    for step in range(50):
        recon, post = vae(x, generator=torch.Generator().manual_seed(step))
        loss, logs = loss_fn(x, recon, post, step, last_layer=vae.decoder.conv_out.conv.weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss_fn.adversarial_active(step):
            d_loss, _ = loss_fn.discriminator_loss(x, recon.detach())
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
        losses.append(logs["rec"])
    with torch.no_grad():
        psnr_end = psnr(x, vae(x, sample=False)[0].clamp(-1, 1))
    assert sum(losses[-5:]) / 5 < 0.35 * sum(losses[:5]) / 5  # measured: 0.77 -> 0.16
    assert psnr_end > psnr_start + 8  # measured: 9.3 -> 22.6 dB (SSIM 0.88)


# ---------------------------------------------------------------- the factorized convolution
def test_factorized_conv_starts_as_a_per_frame_conv_and_is_cheaper():
    from patchflow.models.vae_blocks import CausalConv3d, FactorizedConv3d, initialize_weights

    torch.manual_seed(0)
    conv = FactorizedConv3d(8, 8)
    initialize_weights(conv)  # the temporal half: identity on the current frame
    x = torch.randn(1, 8, 5, 6, 6)
    frame_by_frame = torch.cat([conv.spatial(x[:, :, i:i + 1]) for i in range(5)], dim=2)
    torch.testing.assert_close(conv(x), frame_by_frame, atol=1e-6, rtol=0)
    full = CausalConv3d(8, 8, 3)
    weights = sum(p.numel() for p in conv.parameters() if p.ndim > 1)
    assert weights == 8 * 8 * (9 + 3) < sum(p.numel() for p in full.parameters() if p.ndim > 1) == 8 * 8 * 27
    # Trained (random) temporal weights mix frames, causally: frame 2 never sees frame 3.
    with torch.no_grad():
        conv.temporal.conv.weight.normal_(0, 0.1)
    y = x.clone()
    y[:, :, 3:] += 1.0
    a, b = conv(x), conv(y)
    assert torch.equal(a[:, :, :3], b[:, :, :3]) and (a[:, :, 3:] - b[:, :, 3:]).abs().max() > 1e-3


def test_factorized_residual_block_starts_as_the_identity():
    from patchflow.models.vae_blocks import ResBlock3d, initialize_weights

    block = ResBlock3d(8, 8, "group", "factorized")
    initialize_weights(block)  # conv1's temporal half: identity; conv2's: zero (checked in that order)
    x = torch.randn(1, 8, 5, 6, 6)
    torch.testing.assert_close(block(x), x, atol=1e-6, rtol=0)


def test_old_config_key_patch_size_loads_as_pixel_fold(tmp_path):
    # The VAE's pixel fold was called patch_size (the DiT's word for its spacetime patch); folders saved
    # before the rename keep loading.
    import json

    vae = VideoVAE(VAE_PRESETS["tiny"]())
    vae.save_pretrained(tmp_path / "v")
    config = json.loads((tmp_path / "v" / "config.json").read_text())
    assert "pixel_fold" in config and "patch_size" not in config
    config["patch_size"] = config.pop("pixel_fold")
    (tmp_path / "v" / "config.json").write_text(json.dumps(config))
    assert VideoVAE.from_pretrained(tmp_path / "v").config.pixel_fold == VAE_PRESETS["tiny"]().pixel_fold
