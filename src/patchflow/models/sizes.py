"""Which frame counts and sizes a video VAE (and a DiT patch on its latents) takes, with errors that say so.

The one place these rules live; the VAE, the pipeline, the server, training and patchify call them.
The causal VAE encodes frame 0 alone and then groups of ft frames, downsampling space by fs: T' =
1 + (T - 1) / ft, H' = H / fs. A DiT patch of pt latent frames (ph x pw latent pixels) narrows the
rules: T' must be a multiple of pt, so T = 1 + ft (k pt - 1); H and W multiples of fs ph and fs pw.
"""

from __future__ import annotations

import math


def frame_steps(ft: int, pt: int) -> tuple[int, int]:
    """(first, step): the valid pixel frame counts are first + step k, k >= 0."""
    return 1 + ft * (pt - 1), ft * pt


def frames_rule(ft: int, pt: int = 1) -> str:
    """The frame-count rule in words: '1 + 4k (1, 5, 9, 13, 17, ...)'."""
    first, step = frame_steps(ft, pt)
    examples = ", ".join(str(first + step * k) for k in range(5))
    return f"{first} + {step}k ({examples}, ...)"


def nearest_valid_frames(num_frames: int, ft: int, pt: int = 1) -> int:
    """The valid frame count nearest to `num_frames` (ties round up)."""
    first, step = frame_steps(ft, pt)
    return first + step * max(0, math.floor((num_frames - first) / step + 0.5))


def check_frames(num_frames: object, ft: int, pt: int = 1, name: str = "num_frames") -> int:
    """`num_frames` if the VAE (and a DiT temporal patch of `pt` latent frames) can take it, else ValueError."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"{name} must be a positive int, got {num_frames!r}")
    first, step = frame_steps(ft, pt)
    if num_frames < first or (num_frames - first) % step:
        why = "the causal VAE" + (f" and the DiT's temporal patch {pt}" if pt > 1 else "")
        raise ValueError(f"{name} must be {frames_rule(ft, pt)} for {why}, got {num_frames}; "
                         f"nearest valid: {nearest_valid_frames(num_frames, ft, pt)}")
    return num_frames


def shape_rules(ft: int, fs: int, patch: tuple[int, int, int] = (1, 1, 1)) -> dict:
    """The rules above as data (for the web page): valid frame counts `frames_first + frames_step k`,
    sides multiples of `size_multiple` ([height, width]), `frames_rule` in words."""
    first, step = frame_steps(ft, patch[0])
    return {"frames_first": first, "frames_step": step, "frames_rule": frames_rule(ft, patch[0]),
            "size_multiple": [fs * patch[1], fs * patch[2]]}


def latent_frames(num_frames: int, ft: int) -> int:
    """T' = 1 + (T - 1) / ft for a valid pixel frame count T (checked)."""
    return 1 + (check_frames(num_frames, ft) - 1) // ft


def check_side(n: object, fs: int, p: int = 1, name: str = "height") -> int:
    """`n` if it is a positive multiple of fs p (VAE downsampling x DiT patch), else ValueError."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    unit = fs * p
    if n % unit:
        why = f"the VAE (fs={fs})" + (f" and the DiT's patch {p}" if p > 1 else "")
        nearest = unit * max(1, math.floor(n / unit + 0.5))
        raise ValueError(f"{name} must be a multiple of {unit} ({unit}, {2 * unit}, {3 * unit}, ...) for {why}, "
                         f"got {n}; nearest valid: {nearest}")
    return n


def check_size(height: object, width: object, fs: int, patch: tuple[int, int] = (1, 1),
               names: tuple[str, str] = ("height", "width")) -> tuple[int, int]:
    """(height, width) if both are positive multiples of fs x the DiT patch (ph, pw), else ValueError."""
    return check_side(height, fs, patch[0], names[0]), check_side(width, fs, patch[1], names[1])
