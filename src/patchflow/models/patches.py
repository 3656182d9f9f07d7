"""Spacetime patches and NaViT Patch n' Pack.

A latent video [C, T, H, W] (an image is T = 1) is cut into patches of
(pt, ph, pw) and flattened to tokens [N, pt*ph*pw*C], each with its (t, h, w)
coordinate in patch-grid units. Clips of any duration, resolution and aspect
ratio become token sequences of different lengths N.

Training packs those sequences into R rows of S = `budget` tokens
(first-fit-decreasing, as in NaViT, Dehghani et al. 2023): every row holds
whole samples back to back, padding only at the row's end. A sample never
spans two rows; attention stays inside a sample through `sample_ids` (the
block-diagonal mask of `attention.py`). The padded path (`pad_batch`, one
sample per row, padded to the longest) is the bucketing baseline.

Layout of a row (S = 10, samples 3 and 0, one padding token):
    sample_ids  3 3 3 3 3 0 0 0 0 -1
    token_index 0 1 2 4 5 0 1 2 3 -1   (token 3 of sample 3 was dropped)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from einops import rearrange

from patchflow.models.sizes import check_frames, check_size

Patch = tuple[int, int, int]


# ---------------------------------------------------------------------------
# patchify / unpatchify
# ---------------------------------------------------------------------------

def _check_patch(patch) -> Patch:
    if len(patch) != 3 or not all(isinstance(p, int) and p >= 1 for p in patch):
        raise ValueError(f"patch must be 3 positive ints (pt, ph, pw), got {tuple(patch)}")
    return tuple(patch)


def check_divisible(shape_thw: tuple[int, int, int], patch: Patch,
                    vae_scale: tuple[int, int] | None = None) -> None:
    """Raise a ValueError naming the size rule when a latent dim does not divide by the patch.

    vae_scale = (ft, fs), the VAE's temporal and spatial compression, states the rule in the pixel
    sizes a user gives instead (the VAE's own check_frames / check_size, which own that rule).
    """
    if vae_scale is not None:
        ft, fs = vae_scale
        t, h, w = shape_thw
        check_frames(1 + (t - 1) * ft, ft, patch[0])  # causal VAE: T' = 1 + (T - 1) / ft
        check_size(h * fs, w * fs, fs, patch[1:])
        return
    names = ("frames", "height", "width")
    for i, (size, p) in enumerate(zip(shape_thw, patch)):
        if size % p:
            raise ValueError(f"latent {names[i]} {size} is not divisible by patch {names[i]} {p}")


def patchify(latent: torch.Tensor, patch: Patch,
             vae_scale: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a latent [C, T, H, W] into tokens [N, pt*ph*pw*C] and coords [N, 3] long (t, h, w).

    N = (T/pt)(H/ph)(W/pw), tokens in t-major raster order; coords are patch-grid units.
    """
    patch = _check_patch(patch)
    if latent.dim() != 4:
        raise ValueError(f"latent must be [C, T, H, W], got shape {tuple(latent.shape)}")
    _, t, h, w = latent.shape
    check_divisible((t, h, w), patch, vae_scale)
    pt, ph, pw = patch
    tokens = rearrange(latent, "c (t pt) (h ph) (w pw) -> (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)
    return tokens, grid_coords((t // pt, h // ph, w // pw), device=latent.device)


def grid_coords(grid: tuple[int, int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """Coordinates [N, 3] long (t, h, w) of a patch grid, in the same order as `patchify`."""
    axes = [torch.arange(n, device=device) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (t h w) 3


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], patch: Patch, channels: int) -> torch.Tensor:
    """Inverse of `patchify`: tokens [N, pt*ph*pw*C] on `grid` (T/pt, H/ph, W/pw) -> latent [C, T, H, W]."""
    patch = _check_patch(patch)
    n, d = tokens.shape
    if n != math.prod(grid) or d != math.prod(patch) * channels:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not fit grid {tuple(grid)} x patch {patch} "
                         f"x {channels} channels (expected [{math.prod(grid)}, {math.prod(patch) * channels}])")
    t, h, w = grid
    pt, ph, pw = patch
    return rearrange(tokens, "(t h w) (pt ph pw c) -> c (t pt) (h ph) (w pw)", t=t, h=h, w=w, pt=pt, ph=ph, pw=pw)


# ---------------------------------------------------------------------------
# Packed batches
# ---------------------------------------------------------------------------

@dataclass
class Packed:
    """A batch of B samples packed into R rows of S tokens (D = pt*ph*pw*C).

    tokens      [R, S, D]  patch tokens (padding: zeros)
    coords      [R, S, 3]  long (t, h, w) in patch-grid units (padding: 0)
    sample_ids  [R, S]     long, global sample index 0..B-1; -1 = padding
    timesteps   [R, S]     per-token t in [0, 1]; zeros until the training loop / flow fills it
    cond_mask   [R, S]     bool, clean conditioning tokens (given frames)
    loss_mask   [R, S]     bool, generated tokens that enter the loss (not condition, not padding;
                           dropped tokens are not in the rows at all)
    token_index [R, S]     long, index of the token in its sample's full patch grid (-1 = padding);
                           this and `grids` are all that `unpack` needs
    grids       per sample (T/pt, H/ph, W/pw)
    sample_row  [B]        long, the row holding each sample
    sample_start, sample_len [B]  long, where the sample's kept tokens start in its row, and how many
    """

    tokens: torch.Tensor
    coords: torch.Tensor
    sample_ids: torch.Tensor
    timesteps: torch.Tensor
    cond_mask: torch.Tensor
    loss_mask: torch.Tensor
    token_index: torch.Tensor
    grids: list[tuple[int, int, int]]
    sample_row: torch.Tensor
    sample_start: torch.Tensor
    sample_len: torch.Tensor
    patch: Patch
    channels: int

    @property
    def num_samples(self) -> int:
        return len(self.grids)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int((self.sample_ids >= 0).sum())

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.num_tokens / self.sample_ids.numel()

    def per_token(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Spread per-sample values [B, ...] to tokens [R, S, ...]; padding gets `fill`."""
        if values.shape[0] != self.num_samples:
            raise ValueError(f"per_token needs one value per sample ({self.num_samples}), got {values.shape[0]}")
        values = values.to(self.tokens.device)
        out = values[self.sample_ids.clamp(min=0)]  # [R, S, ...]
        pad = (self.sample_ids < 0).view(*self.sample_ids.shape, *([1] * (values.dim() - 1)))
        return out.masked_fill(pad, fill)

    def to(self, device: torch.device | str) -> Packed:
        moved = {k: v.to(device) for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}
        return replace(self, **moved)

    def unpack(self, tokens: torch.Tensor, return_mask: bool = False):
        """See `unpack`."""
        return unpack(self, tokens, return_mask)


def _prepare(latents, patch, cond_frames, drop_rates, generator):
    """Patchify every sample, mark condition tokens and drop tokens; checks all input first."""
    patch = _check_patch(patch)
    if not isinstance(latents, (list, tuple)) or len(latents) == 0:
        raise ValueError("latents must be a non-empty list of [C, T, H, W] tensors")
    channels = latents[0].shape[0] if latents[0].dim() == 4 else None
    for b, lat in enumerate(latents):
        if lat.dim() != 4 or lat.shape[0] != channels:
            raise ValueError(f"latent {b} has shape {tuple(lat.shape)}; every latent must be [C, T, H, W] "
                             f"with the same C ({channels})")
        check_divisible(tuple(lat.shape[1:]), patch)
    n = len(latents)
    if cond_frames is not None and len(cond_frames) != n:
        raise ValueError(f"cond_frames has {len(cond_frames)} entries for {n} latents")
    rates = [0.0] * n if drop_rates is None else (
        [float(drop_rates)] * n if isinstance(drop_rates, (int, float)) else [float(r) for r in drop_rates])
    if len(rates) != n or not all(0.0 <= r < 1.0 for r in rates):
        raise ValueError(f"drop_rates must be one rate in [0, 1) or one per latent ({n}), got {drop_rates}")

    samples = []
    pt = patch[0]
    for b, lat in enumerate(latents):
        tokens, coords = patchify(lat, patch)
        cond = torch.zeros(tokens.shape[0], dtype=torch.bool, device=lat.device)
        if cond_frames is not None and cond_frames[b] is not None:
            frames = torch.as_tensor(cond_frames[b], dtype=torch.bool, device=lat.device)
            if frames.shape != (lat.shape[1],):
                raise ValueError(f"cond_frames[{b}] must be bool [T_latent={lat.shape[1]}], "
                                 f"got shape {tuple(frames.shape)}")
            per_patch = frames.view(-1, pt)  # [T/pt, pt]: the latent frames of each temporal patch
            if (per_patch.any(1) != per_patch.all(1)).any():
                raise ValueError(f"cond_frames[{b}] mixes condition and generated frames inside a temporal "
                                 f"patch of {pt} frames: condition frames must cover whole temporal patches")
            cond = per_patch[:, 0][coords[:, 0]]
        keep = torch.arange(tokens.shape[0], device=lat.device)
        gen = (~cond).nonzero().squeeze(1)
        n_drop = min(int(rates[b] * gen.numel()), max(gen.numel() - 1, 0))  # keep >= 1 generated token
        if n_drop > 0:
            order = torch.randperm(gen.numel(), generator=generator).to(lat.device)
            mask = torch.ones(tokens.shape[0], dtype=torch.bool, device=lat.device)
            mask[gen[order[:n_drop]]] = False  # only generated tokens are ever dropped
            keep = mask.nonzero().squeeze(1)  # original order is kept
        grid = tuple(s // p for s, p in zip(lat.shape[1:], patch))
        samples.append((tokens[keep], coords[keep], cond[keep], keep, grid))
    return patch, channels, samples


def _assemble(patch, channels, samples, rows: list[list[int]], seq_len: int) -> Packed:
    """Lay samples out in rows (each row a list of sample indices, in order) of seq_len tokens."""
    first = samples[0][0]
    r, d, b_total = len(rows), first.shape[1], len(samples)
    dev = first.device
    tokens = first.new_zeros(r, seq_len, d)
    coords = torch.zeros(r, seq_len, 3, dtype=torch.long, device=dev)
    sample_ids = torch.full((r, seq_len), -1, dtype=torch.long, device=dev)
    token_index = torch.full((r, seq_len), -1, dtype=torch.long, device=dev)
    cond_mask = torch.zeros(r, seq_len, dtype=torch.bool, device=dev)
    sample_row = torch.zeros(b_total, dtype=torch.long)
    sample_start = torch.zeros(b_total, dtype=torch.long)
    sample_len = torch.zeros(b_total, dtype=torch.long)
    for ri, row in enumerate(rows):
        pos = 0
        for b in row:
            tok, crd, cond, keep, _ = samples[b]
            n = tok.shape[0]
            tokens[ri, pos:pos + n] = tok
            coords[ri, pos:pos + n] = crd
            sample_ids[ri, pos:pos + n] = b
            token_index[ri, pos:pos + n] = keep
            cond_mask[ri, pos:pos + n] = cond
            sample_row[b], sample_start[b], sample_len[b] = ri, pos, n
            pos += n
    loss_mask = (sample_ids >= 0) & ~cond_mask
    return Packed(tokens=tokens, coords=coords, sample_ids=sample_ids,
                  timesteps=torch.zeros(r, seq_len, dtype=first.dtype, device=dev),
                  cond_mask=cond_mask, loss_mask=loss_mask, token_index=token_index,
                  grids=[s[4] for s in samples], sample_row=sample_row, sample_start=sample_start,
                  sample_len=sample_len, patch=patch, channels=channels)


def first_fit_decreasing(lengths: list[int], budget: int) -> list[list[int]]:
    """Bin-pack item lengths into rows of `budget`: longest first, each into the first row it fits.

    Returns rows as lists of item indices. FFD uses at most 11/9 OPT + 6/9 rows.
    """
    for i, n in enumerate(lengths):
        if n > budget:
            raise ValueError(f"sample {i} has {n} tokens, more than the token budget {budget}: "
                             f"raise the budget or use a smaller clip")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for ri, room in enumerate(free):
            if lengths[i] <= room:
                rows[ri].append(i)
                free[ri] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(budget - lengths[i])
    return rows


def pack(latents: list[torch.Tensor], patch: Patch, budget: int | None = None,
         cond_frames: list[torch.Tensor] | None = None, drop_rates: list[float] | float | None = None,
         generator: torch.Generator | None = None) -> Packed:
    """Patchify latents [C, T_b, H_b, W_b] and pack them into rows of `budget` tokens (first-fit-decreasing).

    budget: tokens per row S; None = the longest sample (fewest rows without splitting one).
    cond_frames[b]: bool [T_b] latent frames given as clean condition (never dropped, never in the loss).
    drop_rates: NaViT token dropping, one rate or one per sample in [0, 1): that fraction of the
        sample's generated tokens is removed at random (condition tokens are never dropped).
    Rows are padded to exactly `budget` tokens so every step has the same shape.
    """
    if budget is not None and (not isinstance(budget, int) or budget < 1):
        raise ValueError(f"budget must be a positive int of tokens per row, got {budget!r}")
    patch, channels, samples = _prepare(latents, patch, cond_frames, drop_rates, generator)
    lengths = [s[0].shape[0] for s in samples]
    budget = max(lengths) if budget is None else budget
    return _assemble(patch, channels, samples, first_fit_decreasing(lengths, budget), budget)


def pad_batch(latents: list[torch.Tensor], patch: Patch, cond_frames: list[torch.Tensor] | None = None,
              drop_rates: list[float] | float | None = None, generator: torch.Generator | None = None,
              pad_to: int | None = None) -> Packed:
    """The bucketing / padded path: one sample per row, padded to the longest (or `pad_to`) tokens.

    Same `Packed` layout as `pack`, so the model, loss and `unpack` do not care which path made it.
    """
    patch, channels, samples = _prepare(latents, patch, cond_frames, drop_rates, generator)
    longest = max(s[0].shape[0] for s in samples)
    if pad_to is not None and pad_to < longest:
        raise ValueError(f"pad_to {pad_to} is shorter than the longest sample ({longest} tokens)")
    return _assemble(patch, channels, samples, [[b] for b in range(len(samples))], pad_to or longest)


def unpack(packed: Packed, tokens: torch.Tensor, return_mask: bool = False):
    """Rows of tokens [R, S, D] (e.g. the model output) back to latents [C, T_b, H_b, W_b] per sample.

    Dropped tokens come back as zeros; with return_mask=True also returns, per sample, a bool
    [T_b/pt, H_b/ph, W_b/pw] grid that is True where a token was present.
    """
    if tokens.shape[:2] != packed.sample_ids.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not match the packed rows {tuple(packed.sample_ids.shape)}")
    out, masks = [], []
    for b, grid in enumerate(packed.grids):
        r, s, n = int(packed.sample_row[b]), int(packed.sample_start[b]), int(packed.sample_len[b])
        index = packed.token_index[r, s:s + n]
        full = tokens.new_zeros(math.prod(grid), tokens.shape[-1])
        full[index] = tokens[r, s:s + n]  # scatter kept tokens to their grid positions
        out.append(unpatchify(full, grid, packed.patch, packed.channels))
        if return_mask:
            present = torch.zeros(math.prod(grid), dtype=torch.bool, device=tokens.device)
            present[index] = True
            masks.append(present.view(grid))
    return (out, masks) if return_mask else out
