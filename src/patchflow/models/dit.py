"""The Diffusion Transformer (DiT) on packed spacetime patch tokens.

    DiT(config)(x, t, coords, sample_ids, text, text_mask) -> v

    x          [R, S, Din]   patch tokens of packed rows (Din = pt*ph*pw*C; see patches.Packed)
    t          [R, S]        per-token timestep in [0, 1]: clean condition tokens t = 0, noisy ones t > 0
    coords     [R, S, 3]     long (t, h, w) patch-grid coordinates, for the 3D rotary positions
    sample_ids [R, S]        long sample index b (-1 = padding); tokens attend only within their sample
    text       [B, L, Dtxt]  text encoder states; sample id b reads row b
    text_mask  [B, L]        bool, True = real text token (None = all real)
    returns    [R, S, Dout]  the velocity per token (Dout = Din); padding positions are zero

Classifier-free guidance in one pass: repeat the rows ([2R, S, ...]), give the second copy
sample ids + B (padding stays -1) and pass text [2B, L, Dtxt] = [cond; uncond].

Architecture: DiT (Peebles & Xie 2023) adaLN-Zero blocks with the timestep
modulation per token, cross-attention to text (PixArt-alpha, Wan), full
spacetime self-attention with 3D RoPE and QK-norm (or, with
attention_layout="factorized", blocks that alternate spatial attention within
a frame and temporal attention along a patch position, as in Latte). Blocks
live in dit_blocks.py, the positions in rope.py, the masks in attention.py.

Presets (`DIT_PRESETS`; width/depth/heads, parameters with in_channels 16, text_dim 384, patch /2):
    tiny 64/2/4 0.25M (tests) | mini 256/6/4 9.1M (CPU training) | S 384/12/6 39.9M
    B 768/12/12 158.9M | L 1024/24/16 559.2M | XL 1152/28/16 824.4M
Per block that is 22 D^2: self-attention 4, cross-attention 4, MLP 8 and adaLN 6 (DiT's
class-conditional blocks have 18 D^2: S 33M ... XL 675M). The per-block adaLN (6 D^2) is
what per-token timesteps cost in parameters; its compute runs on unique t values only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from patchflow.models.attention import BACKENDS, make_plan
from patchflow.models.dit_blocks import (DiTBlock, FinalLayer, FramePosition, TimestepEmbedder,
                                         neighbour_index, sample_extents)
from patchflow.models.rope import rope_axis_dims, rope_cos_sin
from patchflow.weights import load_component, save_component


X_PREDICTION_MIN_T = 0.05  # x-prediction divides by t; below this the velocity's weight stops growing


@dataclass
class DiTConfig:
    in_channels: int = 16                 # latent channels C of the VAE
    patch_size: tuple = (1, 2, 2)         # (pt, ph, pw) spacetime patch of the latent
    hidden_size: int = 384                # width D
    depth: int = 12
    num_heads: int = 6                    # head dim D / heads; must be even (>= 6) for 3D RoPE
    mlp_ratio: float = 4.0
    text_dim: int = 384                   # text encoder width (all-MiniLM-L6-v2: 384)
    qk_norm: bool = True                  # RMSNorm on q and k per head: stable logits at large width
    rope_theta: float = 10000.0
    frequency_embedding_size: int = 256   # sinusoidal timestep features before the MLP
    pooled_text: bool = False             # add the caption's mean state (through an MLP) to the timestep
                                          # embedding that drives adaLN, beside cross-attention (as SD3)
    attention_layout: str = "full"        # "full" spacetime attention | "factorized" spatial/temporal blocks
    attention_backend: str = "auto"       # see attention.py: auto | dense | sdpa | flex | varlen | naive
    gradient_checkpointing: bool = False  # recompute each block in backward: ~1/depth the activation memory
    compile: bool = False                 # torch.compile each block's dense math (see DiT.compile_blocks)
    local_mix: bool = False               # a depthwise 3x3x3 convolution over each sample's token grid on every
                                          # block's MLP input (dit_blocks.LocalMix): locality beside attention
    prediction: str = "v"                 # "v": the network outputs the velocity; "x": it outputs the clean
                                          # tokens x0 and forward returns v = (x_t - x0) / max(t, 0.05), so the
                                          # loss and the samplers are unchanged (x-prediction with a v-loss, JiT)
    frame_position: bool = False          # add each token's place in its frame (a fraction of it) and its frame
                                          # index to its embedding (dit_blocks.FramePosition): RoPE alone gives
                                          # only relative positions, so "starts on the left" cannot be drawn

    def __post_init__(self) -> None:
        self.patch_size = tuple(self.patch_size)
        if len(self.patch_size) != 3 or not all(isinstance(p, int) and p >= 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be three positive ints (pt, ph, pw), got {self.patch_size!r}")
        for name in ("in_channels", "hidden_size", "depth", "num_heads", "text_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        rope_axis_dims(self.hidden_size // self.num_heads)  # head dim must be even and >= 6
        if self.attention_layout not in ("full", "factorized"):
            raise ValueError(f"attention_layout must be 'full' or 'factorized', got {self.attention_layout!r}")
        if self.prediction not in ("v", "x"):
            raise ValueError(f"prediction must be 'v' (velocity) or 'x' (clean latents), got {self.prediction!r}")
        if self.attention_backend not in BACKENDS:
            raise ValueError(f"attention_backend must be one of {BACKENDS}, got {self.attention_backend!r}")

    @property
    def token_dim(self) -> int:
        return self.patch_size[0] * self.patch_size[1] * self.patch_size[2] * self.in_channels


def _preset(width: int, depth: int, heads: int, patch: int):
    def make(**overrides) -> DiTConfig:
        return DiTConfig(**{"hidden_size": width, "depth": depth, "num_heads": heads,
                            "patch_size": (1, patch, patch), **overrides})
    make.__doc__ = f"DiT width {width}, depth {depth}, heads {heads}, patch (1, {patch}, {patch})."
    return make


# Name -> function(**overrides) -> DiTConfig. "B/2" = DiT-B with spatial patch 2, temporal patch 1.
DIT_PRESETS = {
    "tiny": _preset(64, 2, 4, 2),
    "mini": _preset(256, 6, 4, 2),
    **{f"{name}/{p}": _preset(w, d, h, p)
       for name, (w, d, h) in {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}.items()
       for p in (1, 2, 4)},
}


def dit_config(preset: str, **overrides) -> DiTConfig:
    """The config of a named preset with field overrides, e.g. dit_config("B/2", in_channels=8)."""
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; choose from {sorted(DIT_PRESETS)}")
    return DIT_PRESETS[preset](**overrides)


class DiT(nn.Module):
    """The Diffusion Transformer on packed tokens; forward's shapes are in the module docstring."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        c = config  # DiTConfig checks its own values
        self.config = c
        d = c.hidden_size
        self.x_embed = nn.Linear(c.token_dim, d)
        if c.frame_position:
            self.frame_pos = FramePosition(d)
        self.t_embed = TimestepEmbedder(d, c.frequency_embedding_size)
        self.text_proj = nn.Sequential(nn.Linear(c.text_dim, d), nn.GELU(), nn.Linear(d, d))
        if c.pooled_text:
            self.pool_embed = nn.Sequential(nn.Linear(c.text_dim, d), nn.SiLU(), nn.Linear(d, d))
        keys = ["self"] * c.depth if c.attention_layout == "full" else ["spatial", "temporal"] * c.depth
        self.blocks = nn.ModuleList([DiTBlock(d, c.num_heads, c.mlp_ratio, c.qk_norm, keys[i], c.local_mix)
                                     for i in range(c.depth)])
        self.final = FinalLayer(d, c.token_dim)
        self.initialize_weights()
        if c.compile:
            self.compile_blocks()

    def initialize_weights(self) -> None:
        # Linear layers (attention, MLP, token embedding): Xavier uniform, zero bias, as in DiT/ViT.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # Timestep MLP and text projection: small normal, as DiT's embedders and PixArt's caption projection.
        for layer in [*self.t_embed.mlp, *self.text_proj, *getattr(self, "pool_embed", [])]:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            # adaLN-Zero: zero modulation makes every gate 0, so each block starts as the identity.
            nn.init.zeros_(block.adaLN.weight)
            nn.init.zeros_(block.adaLN.bias)
            # Cross-attention is ungated: a zero output projection makes it start as a no-op too (PixArt).
            nn.init.zeros_(block.cross.proj.weight)
            nn.init.zeros_(block.cross.proj.bias)
        # Output: zero final modulation and projection, so the untrained model predicts v = 0.
        for layer in (self.final.adaLN, self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def compile_blocks(self) -> None:
        """torch.compile every block, for any number of rows and text tokens (dynamic shapes).

        Inductor fuses the norms, modulation, QK-norm, RoPE, GELU and, for the "dense" attention
        backend, the mask and softmax, around the matmuls: on the 2-core CPU that made the Shapes
        World recipe's step 1.3x faster (benchmarks/RESULTS.md, "The training loop") for ~1 minute
        of compilation at the start of a run. The other attention backends stay eager (their plans
        are data-dependent): a graph break on each side.
        """
        from patchflow.models import attention as attention_module

        attention_module.keep_eager_under_compile()
        for block in self.blocks:
            block.compile(dynamic=True)

    sp_group = None  # sequence parallel group (Ulysses): each rank holds a contiguous 1/P of every row's tokens

    def enable_sequence_parallel(self, group) -> None:
        """Run with each row's tokens sharded over the ranks of `group` (a ProcessGroup, None = off).

        forward then takes this rank's shard [R, S/P, ...] of every per-token input (see
        sequence_parallel.shard_packed) and returns its shard of the output; self-attention
        gathers the sequence with all-to-alls over heads, so P must divide num_heads.
        """
        from patchflow.models.sequence_parallel import check_heads

        if group is not None:
            import torch.distributed as dist

            check_heads(self, dist.get_world_size(group))
        self.sp_group = group
        for block in self.blocks:
            block.attn.sp_group = group

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- forward -----------------------------------------------------------------------------------

    def _row_text(self, text: torch.Tensor, text_mask: torch.Tensor, sample_ids: torch.Tensor):
        """The batch's real text tokens, flat [N, Dtxt] (sample after sample), and per row the positions
        in them of the tokens of the samples it holds [R, K] (pad 0) with their sample ids [R, K] (-1 pad).

        Cross-attention projects the N real tokens once and gathers rows from them: projecting the rows
        themselves would repeat the work for every padded slot (a packed row's K is 3x its real tokens).
        """
        b, l, _ = text.shape
        lengths = text_mask.sum(1)                                           # [B]
        starts = (torch.cumsum(lengths, 0) - lengths).tolist()
        lengths = lengths.tolist()
        flat = text[text_mask] if sum(lengths) else text.new_zeros(1, text.shape[-1])  # [N, Dtxt]
        rows, ids = [], []
        for row in sample_ids:
            present = row[row >= 0].unique().tolist()
            rows.append(torch.cat([torch.arange(starts[i], starts[i] + lengths[i]) for i in present])
                        if present else row.new_zeros(0))
            ids.append(torch.cat([torch.full((lengths[i],), i) for i in present]) if present else row.new_zeros(0))
        k = max(1, max(len(r) for r in rows))
        index = torch.stack([nn.functional.pad(r, (0, k - len(r))) for r in rows]).to(sample_ids.device)  # [R, K]
        text_ids = torch.stack([nn.functional.pad(i, (0, k - len(i)), value=-1) for i in ids]).to(sample_ids.device)
        return flat, index, text_ids

    def _plans(self, coords: torch.Tensor, sample_ids: torch.Tensor, text_ids: torch.Tensor, dtype: torch.dtype):
        backend = self.config.attention_backend
        plans = {"cross": make_plan(sample_ids, text_ids, backend, dtype)}
        if self.sp_group is not None:  # sequence parallel: self-attention runs on whole rows (sequence_parallel.py)
            from patchflow.models.sequence_parallel import gather_sequence

            coords, sample_ids = gather_sequence(coords, self.sp_group), gather_sequence(sample_ids, self.sp_group)
        if self.config.attention_layout == "full":
            plans["self"] = make_plan(sample_ids, None, backend, dtype)
            return plans
        valid = sample_ids >= 0
        t, h, w = coords.unbind(-1)
        nt, nh, nw = (int(a.max()) + 1 for a in (t, h, w))
        spatial = torch.where(valid, sample_ids * nt + t, -1)                 # one group per (sample, frame)
        temporal = torch.where(valid, (sample_ids * nh + h) * nw + w, -1)     # one group per (sample, h, w)
        plans["spatial"] = make_plan(spatial, None, backend, dtype)
        plans["temporal"] = make_plan(temporal, None, backend, dtype)
        return plans

    def _conditioning(self, t: torch.Tensor, sample_ids: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor):
        """The adaLN input of each distinct conditioning: SiLU(embed(t) [+ pooled text]) [U, D], and per token
        its row [R, S]. Computed once per distinct value, not per token; blocks spread it with a one-hot matmul."""
        t_unique, t_index = torch.unique(t, return_inverse=True)
        temb = self.t_embed(t_unique)                                      # [Ut, D]
        if not self.config.pooled_text:
            return nn.functional.silu(temb), t_index
        # One row per distinct (t, sample): sample -1 (padding) gets the timestep alone.
        b = text.shape[0]
        mask = text_mask[..., None].to(text.dtype)
        pooled = (text * mask).sum(1) / mask.sum(1).clamp(min=1)           # [B, Dtxt] mean of the real tokens
        pooled = torch.cat([pooled.new_zeros(1, pooled.shape[1]), pooled])  # row 0: no sample
        pairs, index = torch.unique(t_index * (b + 1) + sample_ids + 1, return_inverse=True)  # [U], [R, S]
        cond = temb[pairs // (b + 1)] + self.pool_embed(pooled)[pairs % (b + 1)]  # [U, D]
        return nn.functional.silu(cond), index

    def forward(self, x: torch.Tensor, t: torch.Tensor, coords: torch.Tensor, sample_ids: torch.Tensor,
                text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity [R, S, Dout] for packed tokens; shapes in the module docstring."""
        c = self.config
        r, s = sample_ids.shape
        if x.shape != (r, s, c.token_dim) or t.shape != (r, s) or coords.shape != (r, s, 3):
            raise ValueError(f"expected x [R, S, {c.token_dim}], t [R, S], coords [R, S, 3] with R, S = {r}, {s}; "
                             f"got {tuple(x.shape)}, {tuple(t.shape)}, {tuple(coords.shape)}")
        if text.dim() != 3 or text.shape[-1] != c.text_dim:
            raise ValueError(f"text must be [B, L, {c.text_dim}], got {tuple(text.shape)}")
        text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device) if text_mask is None else text_mask
        if text_mask.shape != text.shape[:2]:
            raise ValueError(f"text_mask {tuple(text_mask.shape)} does not match text {tuple(text.shape[:2])}")
        if int(sample_ids.max()) >= text.shape[0]:
            raise ValueError(f"sample id {int(sample_ids.max())} has no text row (text has {text.shape[0]} rows)")

        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        text_flat, text_index, text_ids = self._row_text(text, text_mask.bool(), sample_ids)  # [N, Dtxt], [R, K]
        text_tokens = (self.text_proj(text_flat), text_index)              # [N, D] and each row's picks
        plans = self._plans(coords, sample_ids, text_ids, dtype)
        rope = rope_cos_sin(coords, c.hidden_size // c.num_heads, c.rope_theta)  # 2 x [R, S, 1, Dh/2]

        temb, index = self._conditioning(t, sample_ids, text, text_mask)  # [U, D], [R, S] into U
        onehot = nn.functional.one_hot(index, len(temb)).to(dtype) if len(temb) > 1 else None  # [R, S, U]

        neighbours = None
        if c.local_mix:
            if self.sp_group is not None:
                raise ValueError("local_mix needs each sample's whole token grid on one rank: no sequence parallelism")
            neighbours = neighbour_index(coords, sample_ids)               # [R, S, 27]
        h = self.x_embed(x)                                                # [R, S, D]
        if c.frame_position:  # each sample's grid size from all its tokens, also under sequence parallelism
            if self.sp_group is not None:
                from patchflow.models.sequence_parallel import gather_sequence

                extents = sample_extents(gather_sequence(coords, self.sp_group),
                                         gather_sequence(sample_ids, self.sp_group))
            else:
                extents = sample_extents(coords, sample_ids)
            h = h + self.frame_pos(coords, sample_ids, extents)
        for block in self.blocks:
            if c.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, temb, onehot, rope, text_tokens, plans, neighbours, use_reentrant=False)
            else:
                h = block(h, temb, onehot, rope, text_tokens, plans, neighbours)
        out = self.final(h, temb, onehot)                                  # [R, S, Dout]
        if c.prediction == "x":  # out is x0: the velocity of the straight path through x_t
            out = (x.to(out.dtype) - out) / t.clamp(min=X_PREDICTION_MIN_T)[..., None].to(out.dtype)
            return out * ((sample_ids >= 0) & (t > 0))[..., None]          # clean (given) tokens: no motion
        return out * (sample_ids >= 0)[..., None]                          # padding predicts exactly 0

    def forward_packed(self, packed, text: torch.Tensor, text_mask: torch.Tensor | None = None,
                       x: torch.Tensor | None = None) -> torch.Tensor:
        """forward on a patches.Packed (its tokens and timesteps unless x is given)."""
        x = packed.tokens if x is None else x
        return self(x, packed.timesteps, packed.coords, packed.sample_ids, text, text_mask)

    # -- cost --------------------------------------------------------------------------------------

    def estimate_flops(self, tokens_per_sample: int | Sequence, text_len: int) -> float:
        """Forward FLOPs (2 per multiply-add) of a batch: matmuls and attention, padding excluded.

        tokens_per_sample: one sample's N (int) or (T, H, W) patch grid (tuple), or a list of those
        per sample (grids are needed for the factorized layout). Per token and layer: 24 D^2 (qkv, out, MLP) + 4 N D (scores and
        weighted sum over the N tokens it attends) + cross-attention 4 D^2 + 4 L D; per text token
        and layer 4 D^2 (k, v). Plus token embedding and output, and the text projection.
        """
        c = self.config
        d = c.hidden_size
        mlp = 2 * 2 * d * int(d * c.mlp_ratio)
        if isinstance(tokens_per_sample, (int, tuple)):
            tokens_per_sample = [tokens_per_sample]  # one sample: N or a (T, H, W) grid
        total = 0.0
        for sample in tokens_per_sample:
            if isinstance(sample, int):
                if c.attention_layout == "factorized":
                    raise ValueError("the factorized layout needs (T, H, W) grids to count attention FLOPs")
                n, groups = sample, [sample] * c.depth
            else:
                n = sample[0] * sample[1] * sample[2]
                groups = [n] * c.depth if c.attention_layout == "full" else \
                    [sample[1] * sample[2] if k % 2 == 0 else sample[0] for k in range(c.depth)]
            per_layer = [n * (8 * d * d + mlp + 4 * g * d + 4 * d * d + 4 * text_len * d) + text_len * 4 * d * d
                         for g in groups]
            total += sum(per_layer) + n * 2 * 2 * c.token_dim * d + text_len * 2 * (c.text_dim * d + d * d)
        return total

    def estimate_mfu(self, tokens_per_sample: int | Sequence, text_len: int, seconds_per_step: float,
                     peak_flops: float, training: bool = True) -> float:
        """Model FLOPs utilisation: (3x forward FLOPs if training) / time / peak (recompute not counted)."""
        flops = self.estimate_flops(tokens_per_sample, text_len) * (3 if training else 1)
        return flops / seconds_per_step / peak_flops

    # -- saving ------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None):
        return save_component(directory, self.config, self.state_dict(), dtype)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides) -> DiT:
        """Load a folder written by save_pretrained; overrides change runtime fields (backend, checkpointing)."""
        config, state = load_component(directory, DiTConfig)
        for key in overrides:
            if not hasattr(config, key):
                raise ValueError(f"unknown DiTConfig field {key!r}")
        model = cls(replace(config, **overrides))  # checked again
        model.load_state_dict(state)
        return model
