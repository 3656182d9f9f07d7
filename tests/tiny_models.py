"""Tiny random models shared by the tests (random weights: the zero-initialised DiT would
output zeros everywhere, making every video the same)."""

from pathlib import Path

import torch

from patchflow.dit import DiT, dit_config


def random_tiny_dit(text_dim: int, seed: int = 0, std: float = 0.1, **overrides) -> DiT:
    torch.manual_seed(seed)
    model = DiT(dit_config("tiny", in_channels=4, text_dim=text_dim, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def saved_tiny_pipeline(folder: Path, frames: int, height: int, width: int):
    """A tiny random VideoPipeline saved to `folder` and loaded back (as `--model DIR` loads it)."""
    from patchflow.pipeline import VideoPipeline
    from patchflow.text import load_text_encoder
    from patchflow.vae import VAE_PRESETS, VideoVAE

    text = load_text_encoder("tiny")
    built = VideoPipeline(random_tiny_dit(text.dim, std=0.05), VideoVAE(VAE_PRESETS["tiny"]()), text,
                          text_encoder_spec="tiny",
                          defaults={"num_frames": frames, "height": height, "width": width,
                                    "num_inference_steps": 2, "guidance_scale": 2.0})
    built.save_pretrained(folder)
    return VideoPipeline.from_pretrained(folder)
