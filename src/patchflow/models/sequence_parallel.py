"""Ulysses sequence parallelism for the DiT (Jacobs et al. 2023, DeepSpeed-Ulysses).

P ranks of a sequence-parallel (SP) group hold the same packed batch, each a
contiguous 1/P of every row's tokens (dim S of [R, S, ...]). Everything in a
DiT block except self-attention is per token, so it runs on the local shard
unchanged; cross-attention needs no communication either, because each token
reads its own sample's text and the text is replicated on every rank.
Self-attention needs the whole row, and gets it by two all-to-alls:

    q, k, v [R, S/P, H, Dh]  --all-to-all: scatter heads, gather sequence-->  [R, S, H/P, Dh]
    attention over the full rows on H/P heads (the usual plans, built from the gathered ids)
    out     [R, S, H/P, Dh]  --all-to-all: scatter sequence, gather heads-->  [R, S/P, H, Dh]

Each rank moves 4 x (R S D / P) activations per layer, independent of P's
effect on attention cost, and P must divide the head count. The all-to-all is
an autograd Function whose backward is the reverse all-to-all, so training works.
gloo in torch 2.13 (CPU) supports `all_to_all_single`, NCCL always does.

Composition with data parallelism: every one of the W = DP x P ranks runs DDP
or FSDP2 over the whole world (gradients averaged over W), the P ranks of an SP
group load the same batch and shard it with `shard_packed`. Because DDP/FSDP
average over W while the P shards of one batch must be *summed*, the loss of a
shard is scaled by P (`flow.flow_loss(..., group=group)` does this).

    mesh = sequence_parallel_mesh(sp_size)               # ("dp", "sp") DeviceMesh
    model.enable_sequence_parallel(mesh["sp"].get_group())
    local = shard_packed(packed, group)                   # this rank's tokens
    pred = model.forward_packed(local, text, text_mask)   # [R, S'/P, D]
    loss, per_sample = flow_loss(pred, shard_sequence(target, group), local.loss_mask, "sample",
                                 local.sample_ids, packed.num_samples, group)
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import nn


def _check_group(group) -> int:
    if not dist.is_initialized():
        raise RuntimeError("sequence parallelism needs an initialised torch.distributed process group")
    return dist.get_world_size(group)


def _all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Chunk p of x along scatter_dim goes to rank p; received chunks are concatenated along gather_dim."""
    p = dist.get_world_size(group)
    send = torch.stack(x.chunk(p, dim=scatter_dim)).contiguous()   # [P, *chunk]: chunk p for rank p
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)                # recv[p] = rank p's chunk for me
    return torch.cat(recv.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    """all-to-all whose backward is the reverse all-to-all (gather and scatter dims swapped)."""

    @staticmethod
    def forward(ctx, x, group, scatter_dim, gather_dim):
        ctx.group, ctx.scatter_dim, ctx.gather_dim = group, scatter_dim, gather_dim
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad.contiguous(), ctx.group, ctx.gather_dim, ctx.scatter_dim), None, None, None


def all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Differentiable all-to-all over `group`: x's scatter_dim (size divisible by P) is split into P
    chunks sent to ranks 0..P-1, and the P received chunks are concatenated along gather_dim.
    E.g. [R, S/P, H, Dh] with scatter_dim=2, gather_dim=1 -> [R, S, H/P, Dh]."""
    p = _check_group(group)
    if x.shape[scatter_dim] % p:
        raise ValueError(f"all_to_all: dim {scatter_dim} of size {x.shape[scatter_dim]} is not divisible by "
                         f"the group size {p}")
    if p == 1:
        return x
    return _AllToAll.apply(x, group, scatter_dim, gather_dim)


def gather_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """The full rows [R, S, ...] from every rank's shard [R, S/P, ...] (no gradient: ids, coords, outputs)."""
    p = _check_group(group)
    if p == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(p)]
    dist.all_gather(parts, x.detach().contiguous(), group=group)
    return torch.cat(parts, dim=1)                                  # [R, S, ...]


def shard_sequence(x: torch.Tensor, group, fill: float | int | bool = 0) -> torch.Tensor:
    """This rank's contiguous shard [R, S'/P, ...] of full rows [R, S, ...]; S is padded with `fill`
    to S' = P * ceil(S / P) first, so any row length works."""
    p = _check_group(group)
    rank = dist.get_rank(group)
    s = x.shape[1]
    pad = -s % p
    if pad:
        x = torch.cat([x, x.new_full((x.shape[0], pad, *x.shape[2:]), fill)], dim=1)  # [R, S', ...]
    n = x.shape[1] // p
    return x[:, rank * n:(rank + 1) * n]


def shard_packed(packed, group):
    """This rank's shard of a patches.Packed: every per-token field [R, S, ...] cut to [R, S'/P, ...]
    (padding tokens, id -1, appended when S is not divisible by P).

    The per-sample fields (grids, sample_row/start/len) still describe the full rows: to `unpack`
    an output, gather it first with `gather_sequence(out, group)[:, :S]`.
    """
    fields = {"tokens": 0, "coords": 0, "sample_ids": -1, "timesteps": 0.0, "cond_mask": False,
              "loss_mask": False, "token_index": -1}
    return replace(packed, **{name: shard_sequence(getattr(packed, name), group, fill)
                              for name, fill in fields.items()})


def sequence_parallel_mesh(sp_size: int, device_type: str | None = None):
    """A ("dp", "sp") DeviceMesh of the world: ranks [k*P, (k+1)*P) form SP group k, so an SP group stays
    on one node (its all-to-alls are the latency-critical traffic). mesh["sp"].get_group() is this rank's
    SP group; the data-parallel rank (which batch to load) is mesh["dp"].get_local_rank()."""
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    if not isinstance(sp_size, int) or sp_size < 1 or world % sp_size:
        raise ValueError(f"sequence parallel size {sp_size!r} must be a positive divisor of the world size {world}")
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    return init_device_mesh(device_type, (world // sp_size, sp_size), mesh_dim_names=("dp", "sp"))


def check_heads(model: nn.Module, sp_size: int) -> None:
    """Raise unless the model's head count divides by the SP size (Ulysses scatters whole heads)."""
    heads = model.config.num_heads
    if heads % sp_size:
        raise ValueError(f"sequence parallel size {sp_size} must divide num_heads {heads}")
