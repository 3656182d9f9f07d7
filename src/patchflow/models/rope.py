"""3D rotary position embedding (RoPE) over (t, h, w) patch coordinates.

The head dimension Dh is split across the three axes as in Wan: h and w get
2*(Dh//6) dims each and t the rest, so for Dh = 64: t 24, h 20, w 20. Each axis
rotates its pairs of dims by angle pos * theta^(-2i/d_axis). Rotation happens
in the "rotate half" layout: pair i is (x[i], x[i + Dh/2]), so the first half
of the dims holds (t pairs, h pairs, w pairs) and no strided copies are needed.

Because q and k are rotated by their own positions, the score q.k depends only
on the coordinate *difference*: a clip's attention pattern does not change when
it is cropped, shifted or packed next to another clip.
"""

from __future__ import annotations

import torch


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Dims of the head given to (t, h, w); each even, summing to head_dim."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head dim of at least 6, got {head_dim}")
    dh = dw = 2 * (head_dim // 6)
    return head_dim - dh - dw, dh, dw


def rope_angles(coords: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles [..., head_dim/2] (fp32) for integer coords [..., 3] (t, h, w)."""
    parts = []
    for axis, dim in enumerate(rope_axis_dims(head_dim)):
        inv_freq = theta ** (-torch.arange(0, dim, 2, device=coords.device, dtype=torch.float32) / dim)  # [dim/2]
        parts.append(coords[..., axis, None].float() * inv_freq)                                     # [..., dim/2]
    return torch.cat(parts, dim=-1)


def rope_cos_sin(coords: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [R, S, 1, head_dim/2] for coords [R, S, 3], shaped to broadcast over heads of [R, S, H, Dh]."""
    angles = rope_angles(coords, head_dim, theta)[:, :, None, :]  # [R, S, 1, Dh/2]
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos) on the two halves of the last dim, 4 passes, no temporaries."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    y1, y2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=y1)
    y1.addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=y2)
    y2.addcmul_(x1, sin)
    return out


class _Rope(torch.autograd.Function):
    """RoPE with a hand-written backward: the gradient of a rotation is the inverse rotation,
    which avoids the zero-filled slice gradients autograd would build (rope is memory-bound on CPU)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return rotate(grad, cos, -sin), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [R, S, H, Dh] by cos/sin [R, S, 1, Dh/2] (rotate-half pairs), in x's dtype (no grad to cos/sin)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if torch.compiler.is_compiling():  # inductor fuses the plain expression better than a custom Function
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return _Rope.apply(x, cos, sin)
