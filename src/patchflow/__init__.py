"""patchflow: a Sora-style text-to-video system in PyTorch.

Spacetime patches of a causal 3D VAE's latents, packed NaViT-style, denoised by a
flow-matching Diffusion Transformer conditioned on text.
"""

__version__ = "0.1.0"
