"""Training objective of the video VAE: L1 + (1 - SSIM) + KL, plus an optional
3D patch discriminator (hinge loss) switched on at `adv_start_step`.

How a training loop calls it (images are 1-frame videos; any size the VAE takes;
each batch holds clips of one shape, shapes may change from batch to batch):

    loss_fn = VAELoss(VAELossConfig(adv_start_step=2000))
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    opt_d = torch.optim.AdamW(loss_fn.parameters(), lr=1e-4) if loss_fn.discriminator else None
    for step, video in enumerate(batches):                # video: [B, 3, T, H, W] in [-1, 1]
        recon, posterior = vae(video)
        loss, logs = loss_fn(video, recon, posterior, step, last_layer=vae.decoder.conv_out.conv.weight)
        opt.zero_grad(); loss.backward(); opt.step()
        if loss_fn.adversarial_active(step):
            d_loss, d_logs = loss_fn.discriminator_loss(video, recon.detach())
            opt_d.zero_grad(); d_loss.backward(); opt_d.step()

The discriminator lives inside `loss_fn`, so checkpoint `loss_fn.state_dict()`
(and `opt_d`) next to the VAE. All logged values are plain floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from patchflow.evaluation.metrics import ssim_frames
from patchflow.models.vae import LatentDist


@dataclass
class VAELossConfig:
    l1_weight: float = 1.0  # pixel L1 in [-1, 1] units
    mse_weight: float = 0.0  # pixel MSE in [-1, 1] units (what PSNR measures; flat-colour worlds learn faster with it)
    ssim_weight: float = 0.2  # weight of (1 - SSIM); a structural term that sharpens edges L1 blurs
    kl_weight: float = 1e-6  # per pixel value (as in SD/Wan); small: the latent scale is fixed later by normalize()
    latent_noise: float = 0.0  # std of noise added to the normalised latent before decoding (VideoVAE.forward)
    adv_weight: float = 0.1  # generator hinge loss weight (times the adaptive factor below)
    adv_start_step: int = -1  # step at which the discriminator starts; < 0 = no discriminator
    adaptive_adv: bool = True  # VQGAN: scale adv gradients to match reconstruction gradients at the last layer
    disc_channels: int = 32  # discriminator base width
    disc_layers: int = 3  # strided layers: each halves H and W (patches of ~2^layers * 4 pixels)

    def __post_init__(self) -> None:
        for name in ("l1_weight", "mse_weight", "ssim_weight", "kl_weight", "adv_weight", "latent_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"vae_loss.{name} must be >= 0, got {getattr(self, name)}")


class PatchDiscriminator3d(nn.Module):
    """Video patch discriminator: `[B, 3, T, H, W]` -> logits `[B, 1, T, H/2^L, W/2^L]` (any T >= 1).

    Kernels span 3 frames (zero-padded, so 1-frame images work) and 4x4 pixels
    with stride 2 in space; GroupNorm, LeakyReLU as in PatchGAN.
    """

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv3d(3, channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(layers - 1):
            mods += [nn.Conv3d(c, 2 * c, (3, 4, 4), (1, 2, 2), (1, 1, 1), bias=False),
                     nn.GroupNorm(min(32, 2 * c), 2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv3d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)
        # Explicit init as in PatchGAN: N(0, 0.02) conv weights, zero biases, unit norms.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


class VAELoss(nn.Module):
    """`loss_fn(video, recon, posterior, step) -> (loss, logs)`; see the module docstring for the loop."""

    def __init__(self, config: VAELossConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or VAELossConfig()
        for name in ("l1_weight", "mse_weight", "ssim_weight", "kl_weight", "adv_weight"):
            if getattr(c, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(c, name)}")
        use_disc = c.adv_start_step >= 0 and c.adv_weight > 0
        self.discriminator = PatchDiscriminator3d(c.disc_channels, c.disc_layers) if use_disc else None

    def adversarial_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.config.adv_start_step

    def forward(self, video: torch.Tensor, recon: torch.Tensor, posterior: LatentDist, step: int = 0,
                last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Generator (VAE) loss for `video`, `recon` `[B, 3, T, H, W]` in [-1, 1] and the posterior.

        `last_layer`: the decoder's output weight; needed for the adaptive
        adversarial weight (without it the fixed `adv_weight` is used).
        """
        if video.shape != recon.shape:
            raise ValueError(f"video {tuple(video.shape)} and recon {tuple(recon.shape)} differ in shape")
        c = self.config
        err = recon.float() - video.float()
        l1, mse = err.abs().mean(), err.pow(2).mean()
        frames = rearrange(torch.stack([video, recon]), "k b c t h w -> k (b t) c h w")  # 2 x (B*T, 3, H, W)
        with torch.set_grad_enabled(torch.is_grad_enabled() and c.ssim_weight > 0):  # logged either way
            ssim = ssim_frames((frames[1] + 1) / 2, (frames[0] + 1) / 2).mean()  # compared in [0, 1]
        kl = posterior.kl().mean() / video[0].numel()  # nats per pixel value
        rec = c.l1_weight * l1 + c.mse_weight * mse + c.ssim_weight * (1.0 - ssim)
        loss = rec + c.kl_weight * kl
        logs = {"l1": l1.item(), "mse": mse.item(), "ssim": ssim.item(), "kl": kl.item(), "rec": rec.item()}
        if self.adversarial_active(step):
            # The discriminator is not trained by this loss: freeze it so no gradients land there.
            self.discriminator.requires_grad_(False)
            g_adv = -self.discriminator(recon).mean()
            self.discriminator.requires_grad_(True)
            weight = c.adv_weight * self._adaptive_factor(rec, g_adv, last_layer)
            loss = loss + weight * g_adv
            logs.update(g_adv=g_adv.item(), adv_weight=float(weight))
        logs["loss"] = loss.item()
        return loss, logs

    def _adaptive_factor(self, rec: torch.Tensor, g_adv: torch.Tensor, last_layer: torch.Tensor | None) -> float:
        """||d rec / d W_last|| / ||d adv / d W_last||, clamped: keeps the GAN term from swamping reconstruction."""
        if not self.config.adaptive_adv or last_layer is None or not torch.is_grad_enabled():
            return 1.0
        g_rec = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
        g_gan = torch.autograd.grad(g_adv, last_layer, retain_graph=True)[0]
        return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).item()

    def discriminator_loss(self, video: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss of the discriminator on real `video` vs detached `recon` (call after the VAE step)."""
        if self.discriminator is None:
            raise RuntimeError("this VAELoss has no discriminator (set adv_start_step >= 0 and adv_weight > 0)")
        real, fake = self.discriminator(video), self.discriminator(recon.detach())
        loss = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        return loss, {"d_loss": loss.item(), "d_real": real.mean().item(), "d_fake": fake.mean().item()}
