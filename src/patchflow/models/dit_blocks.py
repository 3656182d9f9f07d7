"""Building blocks of the Diffusion Transformer (see dit.py for the model).

Every tensor here is a packed batch: x [R, S, D] rows of tokens of several
samples; attention is kept inside a sample by the `AttentionPlan`s that the
model builds once per forward from the sample ids.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from patchflow.models import attention as attention_module
from patchflow.models.attention import AttentionPlan
from patchflow.models.rope import apply_rope, rotate
from patchflow.models.sequence_parallel import all_to_all


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, all [R, S, D] (or broadcastable)."""
    return torch.addcmul(shift, x, 1 + scale)


def spread(rows: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
    """Per-timestep rows [U, K] to tokens [R, S, K] through onehot [R, S, U]; None (U == 1): [1, 1, K]."""
    return rows[None] if onehot is None else torch.matmul(onehot.to(rows.dtype), rows)


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


class _NormRope(torch.autograd.Function):
    """RMSNorm over the last dim, times `weight`, then (optionally) RoPE: one op with a hand-written
    backward, computed in fp32 (or x's wider dtype) on a contiguous copy and returned in x's dtype.

    q and k arrive as strided views of the fused qkv output, often in bf16; autograd's composite
    RMSNorm then ran ~15 small broadcasting ops on them per call (12% of a CPU training step).
    Backward, with n = x * r the normalised input and r = rsqrt(mean(x^2) + eps):
        g_y = rope^-1(g_out) (the inverse rotation), g_w = sum(g_y * n), g_n = g_y * w,
        g_x = r * (g_n - n * mean(g_n * n)).
    """

    @staticmethod
    def forward(ctx, x, weight, eps, cos, sin):
        with torch.autocast(x.device.type, enabled=False):
            wide = torch.promote_types(x.dtype, torch.float32)
            xf = x.to(wide, memory_format=torch.contiguous_format, copy=True)  # [..., Dh], ours
            r = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))  # [..., 1]
            n = xf.mul_(r)                                                 # normalised, in place
            y = n * weight.to(wide)
            if cos is not None:
                y = rotate(y, cos.to(wide), sin.to(wide))
        ctx.save_for_backward(n, r, weight, cos, sin)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        n, r, weight, cos, sin = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.to(n.dtype, copy=True)                                # ours to change in place
            if cos is not None:
                g = rotate(g, cos.to(n.dtype), -sin.to(n.dtype))
            g_w = (g * n).sum(tuple(range(g.dim() - 1)))
            g_n = g.mul_(weight.to(n.dtype))
            g_x = g_n.sub_(n * (g_n * n).mean(-1, keepdim=True)).mul_(r)
        return g_x.to(grad.dtype), g_w.to(weight.dtype), None, None, None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (per head, for QK-norm) that can apply the rotary positions in the same op.

    forward(x [..., Dh], rope=None | (cos, sin) broadcastable to [..., Dh/2]) -> x's shape and dtype.
    Outside torch.compile it runs `_NormRope` (see there); compiled, the plain ops, which inductor fuses.
    """

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if torch.compiler.is_compiling():
            out = nn.functional.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)
            return out if rope is None else apply_rope(out, *rope)
        cos, sin = rope if rope is not None else (None, None)
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return _NormRope.apply(x, self.weight, eps, cos, sin)


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
        if isinstance(self.q_norm, RMSNorm):
            q, k = self.q_norm(q, rope), self.k_norm(k, rope)                       # normalised and rotated
        else:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
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

    def forward(self, x: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor], plan: AttentionPlan) -> torch.Tensor:
        """x [R, S, D]; text = (tokens [N, D], index [R, K]): each row's text tokens are tokens[index]."""
        r, s, d = x.shape
        tokens, index = text
        q = self.q_norm(self.q(x).view(r, s, self.heads, self.head_dim))                  # [R, S, H, Dh]
        # k, v of the N real tokens once, then gathered per row (an embedding lookup: its backward is cheap).
        kv = nn.functional.embedding(index, self.kv(tokens))                              # [R, K, 2D]
        k, v = kv.view(r, index.shape[1], 2, self.heads, self.head_dim).unbind(2)         # [R, K, H, Dh]
        out = attention_module.attention(q.transpose(1, 2), self.k_norm(k).transpose(1, 2), v.transpose(1, 2), plan=plan)
        return self.proj(out.transpose(1, 2).reshape(r, s, d))


class Mlp(nn.Module):
    """fc1, GELU, fc2. The exact (erf) GELU: on CPU its bf16 forward + backward is 2.6x faster than
    DiT's tanh approximation (3.3 vs 8.6 ms on [2000, 1024]), which had cost ~5% of a training step."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


NEIGHBOUR_OFFSETS = [(dt, dh, dw) for dt in (-1, 0, 1) for dh in (-1, 0, 1) for dw in (-1, 0, 1)]  # 3x3x3
_AXIS = 1024  # coordinates must stay below this in every axis (a 1024-token side is ~16k pixels)


def neighbour_index(coords: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
    """For every packed token, the positions in its row of its 27 grid neighbours (itself included)
    in the same sample: [R, S, 27] long, S (a zero pad `LocalMix` appends) where there is none
    (past the grid's edge, a dropped token, padding). Tokens are found by their (sample, t, h, w)
    key with a sorted search, so any packing and token order works."""
    r, s, _ = coords.shape
    c = coords.long()
    valid = sample_ids >= 0
    key = ((sample_ids.long() * _AXIS + c[..., 0]) * _AXIS + c[..., 1]) * _AXIS + c[..., 2]   # [R, S]
    key = torch.where(valid, key, -1 - torch.arange(s, device=key.device))                   # padding: no match
    order = key.argsort(dim=1)
    sorted_key = key.gather(1, order)                                                        # [R, S]
    steps = torch.tensor([(dt * _AXIS + dh) * _AXIS + dw for dt, dh, dw in NEIGHBOUR_OFFSETS], device=key.device)
    query = (key[..., None] + steps).reshape(r, -1)                                          # [R, S * 27]
    pos = torch.searchsorted(sorted_key, query).clamp(max=s - 1)
    found = (sorted_key.gather(1, pos) == query) & valid.repeat_interleave(len(steps), dim=1)
    index = torch.where(found, order.gather(1, pos), s)
    return index.view(r, s, len(steps))


class LocalMix(nn.Module):
    """A depthwise 3x3x3 convolution over each sample's token grid, on packed tokens: the local
    inductive bias of a convolution beside attention (SegFormer's Mix-FFN puts one in the MLP; a
    DiT otherwise relates neighbouring tokens only through attention). Zero-initialised, so a block
    starts as without it."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(len(NEIGHBOUR_OFFSETS), dim))

    def forward(self, x: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        r, s, d = x.shape                                                   # neighbours [R, S, 27] into 0..S
        padded = torch.cat([x, x.new_zeros(r, 1, d)], dim=1).reshape(r * (s + 1), d)
        rows = torch.arange(r, device=x.device)[:, None, None] * (s + 1)
        gathered = nn.functional.embedding(neighbours + rows, padded)       # [R, S, 27, D]
        return torch.einsum("rskd,kd->rsd", gathered, self.weight.to(x.dtype))


def sample_extents(coords: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
    """Each sample's patch-grid size (T, H, W) from its tokens' coordinates: [B, 3] float, B = max id + 1."""
    valid = (sample_ids >= 0)[..., None]
    c = torch.where(valid, coords, 0).reshape(-1, 3).float()                  # padding counts as (0, 0, 0)
    ids = sample_ids.clamp(min=0).reshape(-1, 1).expand(-1, 3)
    b = int(sample_ids.max()) + 1 if sample_ids.numel() else 1
    return c.new_zeros(b, 3).scatter_reduce(0, ids, c, "amax") + 1


class FramePosition(nn.Module):
    """Where a token is in its frame and clip, added to its embedding: sin/cos of its (h, w) position
    as a fraction of its frame (NaViT's fractional positions, so every size and aspect ratio maps to the
    same canvas) and of its latent frame index. RoPE alone tells attention only where tokens are
    relative to each other, so from pure noise a model cannot put an object on one side of the frame
    (Shapes World's translations start on the side opposite their direction: RESULTS, "Fifth
    sitting"). Initialised like the token embedding (Xavier), so position is not drowned by the noise a
    token holds at t ~ 1; a warm start from a model without it zeroes it (training.stages)."""

    def __init__(self, dim: int, frequencies: int = 4):
        super().__init__()
        self.frequencies = frequencies
        self.proj = nn.Linear(6 * frequencies, dim)

    def features(self, coords: torch.Tensor, sample_ids: torch.Tensor, extents: torch.Tensor) -> torch.Tensor:
        """[R, S, 6F]: per axis F sines and F cosines; h, w at multiples of pi of their fraction (periods
        2, 1, 2/3, ... of the frame), the frame index at periods 2, 4, 8, ... latent frames."""
        c = coords.float()
        grid = extents[sample_ids.clamp(min=0)]                                 # [R, S, 3]
        k = torch.arange(1, self.frequencies + 1, device=c.device, dtype=c.dtype)
        space = ((c[..., 1:] + 0.5) / grid[..., 1:])[..., None] * (math.pi * k)  # [R, S, 2, F]
        time = c[..., :1, None] * (math.pi / 2 ** (k - 1))                      # [R, S, 1, F]
        angles = torch.cat([space, time], dim=2).flatten(2)                     # [R, S, 3F]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, coords: torch.Tensor, sample_ids: torch.Tensor, extents: torch.Tensor) -> torch.Tensor:
        feats = self.features(coords, sample_ids, extents).to(self.proj.weight.dtype)
        return self.proj(feats) * (sample_ids >= 0)[..., None]


class DiTBlock(nn.Module):
    """adaLN-Zero block: modulated self-attention, cross-attention to text, modulated MLP.

    The modulation comes from a per-token timestep embedding. It is computed on
    the U unique timesteps ([U, 6D], U is about the number of samples) and then
    spread to tokens, so it costs 6D^2 per unique t, not per token. The spread is
    a matmul with a one-hot [R, S, U] rather than an index: its backward is a
    second small matmul, where an index's is a scatter-add that took 7% of a CPU
    training step (and picks the same rows exactly, in any dtype). Cross-
    attention is not modulated (as in PixArt-alpha and Wan): its residual starts
    at zero through a zero-initialised output projection instead.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True, plan_key: str = "self",
                 local_mix: bool = False):
        super().__init__()
        self.local = LocalMix(dim) if local_mix else None  # a 3x3x3 token-grid convolution on the MLP's input
        self.plan_key = plan_key  # which self-attention plan: "self" (full), "spatial" or "temporal"
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross = CrossAttention(dim, heads, qk_norm)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.adaLN = nn.Linear(dim, 6 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, t_onehot: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor], text: tuple[torch.Tensor, torch.Tensor],
                plans: dict[str, AttentionPlan], neighbours: torch.Tensor | None = None) -> torch.Tensor:
        """x [R, S, D]; temb [U, D] (SiLU applied); t_onehot [R, S, U] picks each token's row, None when U == 1;
        text (tokens [N, D], index [R, K]) as CrossAttention takes it; neighbours from `neighbour_index`
        when the block has a LocalMix."""
        mod = spread(self.adaLN(temb), t_onehot)                          # [R, S, 6D] or [1, 1, 6D]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope, plans[self.plan_key])
        x = x + self.cross(self.norm2(x), text, plans["cross"])
        h = modulate(self.norm3(x), shift2, scale2)
        if self.local is not None:
            h = h + self.local(h, neighbours)
        return x + gate2 * self.mlp(h)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map to the patch token size."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, t_onehot: torch.Tensor | None) -> torch.Tensor:
        mod = spread(self.adaLN(temb), t_onehot)                          # [R, S, 2D] or [1, 1, 2D]
        shift, scale = mod.chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))
