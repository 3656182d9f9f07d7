"""Building blocks of the Diffusion Transformer (see dit.py for the model).

Every tensor here is a packed batch: x [R, S, D] rows of tokens of several
samples; attention is kept inside a sample by the `AttentionPlan`s that the
model builds once per forward from the sample ids.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import attention as attention_module
from .attention import AttentionPlan
from .rope import apply_rope
from .sequence_parallel import all_to_all


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, all [R, S, D] (or broadcastable)."""
    return torch.addcmul(shift, x, 1 + scale)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [U, dim] of timesteps t [U] in [0, 1] (scaled by 1000 as in DiT's integer t)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]                # [U, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t [U] -> [U, D]: sinusoidal features then a 2-layer MLP (DiT)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_size).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose weight follows the input dtype, so bf16/fp16 autocast keeps the fused kernel
    (torch falls back to a slow unfused path when input and weight dtypes differ)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class SelfAttention(nn.Module):
    """Multi-head self-attention with QK-norm (RMSNorm per head) and 3D RoPE, inside each plan group."""

    sp_group = None  # sequence parallel (Ulysses, sequence_parallel.py): set by DiT.enable_sequence_parallel

    def __init__(self, dim: int, heads: int, qk_norm: bool = True):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)  # one fused matmul for q, k, v
        self.q_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], plan: AttentionPlan) -> torch.Tensor:
        r, s, d = x.shape
        q, k, v = self.qkv(x).view(r, s, 3, self.heads, self.head_dim).unbind(2)  # 3 x [R, S, H, Dh]
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        if self.sp_group is not None:  # local tokens, all heads -> all tokens, H/P heads: one all-to-all for q, k, v
            qkv = all_to_all(torch.stack([q, k, v], 2), self.sp_group, scatter_dim=3, gather_dim=1)  # [R, S*P, 3, H/P, Dh]
            q, k, v = qkv.unbind(2)
        out = attention_module.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), plan=plan)  # [R, H', S', Dh]
        out = out.transpose(1, 2)                                                  # [R, S', H', Dh]
        if self.sp_group is not None:  # and back: all tokens, H/P heads -> local tokens, all heads
            out = all_to_all(out, self.sp_group, scatter_dim=1, gather_dim=2)     # [R, S, H, Dh]
        return self.proj(out.reshape(r, s, d))


class CrossAttention(nn.Module):
    """Tokens attend to their own sample's text tokens (no positions: text order is in its states)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = True):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # fused k, v of the text tokens
        self.q_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        r, s, d = x.shape
        q = self.q_norm(self.q(x).view(r, s, self.heads, self.head_dim))                  # [R, S, H, Dh]
        k, v = self.kv(text).view(r, text.shape[1], 2, self.heads, self.head_dim).unbind(2)  # [R, K, H, Dh]
        out = attention_module.attention(q.transpose(1, 2), self.k_norm(k).transpose(1, 2), v.transpose(1, 2), plan=plan)
        return self.proj(out.transpose(1, 2).reshape(r, s, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block: modulated self-attention, cross-attention to text, modulated MLP.

    The modulation comes from a per-token timestep embedding. It is computed on
    the U unique timesteps ([U, 6D], U is about the number of samples) and then
    gathered to tokens, so it costs 6D^2 per unique t, not per token. Cross-
    attention is not modulated (as in PixArt-alpha and Wan): its residual starts
    at zero through a zero-initialised output projection instead.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True, plan_key: str = "self"):
        super().__init__()
        self.plan_key = plan_key  # which self-attention plan: "self" (full), "spatial" or "temporal"
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross = CrossAttention(dim, heads, qk_norm)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.adaLN = nn.Linear(dim, 6 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, t_index: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor], text: torch.Tensor,
                plans: dict[str, AttentionPlan]) -> torch.Tensor:
        """x [R, S, D]; temb [U, D] (SiLU applied); t_index [R, S] into U, or None when U == 1."""
        mod = self.adaLN(temb)                                            # [U, 6D]
        mod = mod[t_index] if t_index is not None else mod[None]           # [R, S, 6D] or [1, 1, 6D]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope, plans[self.plan_key])
        x = x + self.cross(self.norm2(x), text, plans["cross"])
        return x + gate2 * self.mlp(modulate(self.norm3(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map to the patch token size."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, t_index: torch.Tensor | None) -> torch.Tensor:
        mod = self.adaLN(temb)
        mod = mod[t_index] if t_index is not None else mod[None]           # [R, S, 2D] or [1, 1, 2D]
        shift, scale = mod.chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))
