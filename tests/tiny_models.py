"""Tiny random models shared by the tests (random weights: the zero-initialised DiT would
output zeros everywhere, making every video the same)."""

from pathlib import Path

import torch

from patchflow.models.dit import DiT, dit_config


def random_tiny_dit(text_dim: int, seed: int = 0, std: float = 0.1, **overrides) -> DiT:
    torch.manual_seed(seed)
    model = DiT(dit_config("tiny", in_channels=4, text_dim=text_dim, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def saved_tiny_pipeline(folder: Path, frames: int, height: int, width: int):
    """A tiny random VideoPipeline saved to `folder` and loaded back (as `--model DIR` loads it)."""
    from patchflow.pipelines.pipeline import VideoPipeline
    from patchflow.models.text import load_text_encoder
    from patchflow.models.vae import VAE_PRESETS, VideoVAE

    text = load_text_encoder("tiny")
    built = VideoPipeline(random_tiny_dit(text.dim, std=0.05), VideoVAE(VAE_PRESETS["tiny"]()), text,
                          text_encoder_spec="tiny",
                          defaults={"num_frames": frames, "height": height, "width": width,
                                    "num_inference_steps": 2, "guidance_scale": 2.0})
    built.save_pretrained(folder)
    return VideoPipeline.from_pretrained(folder)


TEXT_DIM = 32
# Five latents of mixed sizes: 18, 4, 20, 18 and 1 tokens at patch (1, 2, 2).
SHAPES = [(4, 3, 6, 4), (4, 1, 4, 4), (4, 5, 2, 8), (4, 2, 6, 6), (4, 1, 2, 2)]


def mixed_packed_batch(budget: int, seed: int = 0):
    """Packed latents of SHAPES with text (two samples with masked text), condition frames
    and per-token timesteps (condition tokens at t = 0). Returns the generator so callers
    can keep drawing from the same stream."""
    from patchflow.models.patches import pack

    gen = torch.Generator().manual_seed(seed)
    latents = [torch.randn(s, generator=gen) for s in SHAPES]
    text = torch.randn(5, 7, TEXT_DIM, generator=gen)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[1, 4:], mask[3, 1:] = False, False
    cond = [torch.tensor([True, False, False]), None, None, torch.tensor([False, True]), None]
    packed = pack(latents, (1, 2, 2), budget=budget, cond_frames=cond)
    t = packed.per_token(torch.rand(5, generator=gen))
    packed.timesteps = torch.where(packed.cond_mask, torch.zeros_like(t), t)  # clean condition tokens: t = 0
    return latents, text, mask, cond, packed, gen
