"""patchflow: a Sora-style text-to-video system in PyTorch.

Spacetime patches of a causal 3D VAE's latents, packed NaViT-style, denoised by a
flow-matching Diffusion Transformer conditioned on text.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy top-level API, so `import patchflow` (and `patchflow --help`) stays fast."""
    if name == "VideoPipeline":
        from patchflow.pipelines.pipeline import VideoPipeline

        return VideoPipeline
    if name == "export_to_video":  # diffusers' name for writing frames to a file
        from patchflow.data.io import write_video

        return write_video
    raise AttributeError(f"module 'patchflow' has no attribute {name!r}")
