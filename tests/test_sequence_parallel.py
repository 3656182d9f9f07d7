"""Ulysses sequence parallelism: 2 gloo processes on CPU against the single-process result.

Each distributed test spawns 2 ranks (torch.multiprocessing, MASTER_ADDR=127.0.0.1 and a free
port); the ranks assert against a reference they compute themselves, or write results that the
parent compares. Tolerances are fp32: 1e-5 absolute on attention and DiT outputs, 1e-4 relative
on parameter gradients and updated weights (the sharded path sums in a different order).
"""

import os
import socket

import pytest
import torch
from tiny_models import TEXT_DIM, mixed_packed_batch, random_tiny_dit
import torch.distributed as dist
import torch.multiprocessing as mp

from patchflow.models.attention import attention, make_plan
from patchflow.models.dit import DiT, dit_config
from patchflow.flow import flow_loss
from patchflow.models.sequence_parallel import (all_to_all, check_heads, gather_sequence, sequence_parallel_mesh,
                                         shard_packed, shard_sequence)

BUDGET = 25  # odd: the shards need one padding token appended


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def _spawn(fn, *args, world: int = 2) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(_entry, args=(world, _free_port(), fn, args), nprocs=world, join=True)


def _model(layout="full", seed=0):
    return random_tiny_dit(TEXT_DIM, seed, attention_layout=layout, attention_backend="varlen")


def _batch(seed=0):
    _, text, mask, _, packed, gen = mixed_packed_batch(BUDGET, seed)
    target = torch.randn(packed.tokens.shape, generator=gen)
    return packed, text, mask, target


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max().clamp(min=1e-6))


# -------------------------------------------------------------------------- attention

def _attention_worker(rank, world):
    group = dist.group.WORLD
    gen = torch.Generator().manual_seed(1)
    r, s, h, dh = 2, 14, 4, 8
    q, k, v, w = (torch.randn(r, s, h, dh, generator=gen) for _ in range(4))  # the same on every rank
    ids = torch.tensor([[0] * 5 + [1] * 6 + [-1] * 3, [2] * 14])
    plan = make_plan(ids, backend="varlen")
    # Reference: one process, full rows.
    qf, kf, vf = (a.clone().requires_grad_() for a in (q, k, v))
    ref = attention(qf.transpose(1, 2), kf.transpose(1, 2), vf.transpose(1, 2), plan=plan).transpose(1, 2)
    (ref * w).sum().backward()
    # Sequence parallel: local shard of the rows, all heads -> full rows, H/P heads -> back.
    ql, kl, vl = (shard_sequence(a, group).clone().requires_grad_() for a in (q, k, v))  # [R, S/P, H, Dh]
    qkv = all_to_all(torch.stack([ql, kl, vl], 2), group, scatter_dim=3, gather_dim=1)  # [R, S, 3, H/P, Dh]
    qs, ks, vs = qkv.unbind(2)
    out = attention(qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2), plan=plan).transpose(1, 2)
    out = all_to_all(out, group, scatter_dim=1, gather_dim=2)                            # [R, S/P, H, Dh]
    (out * shard_sequence(w, group)).sum().backward()
    err = (out - shard_sequence(ref, group)).abs().max().item()
    grad_err = max((a.grad - shard_sequence(b.grad, group)).abs().max().item() for a, b in ((ql, qf), (kl, kf), (vl, vf)))
    print(f"rank {rank}: SP attention max abs error {err:.1e}, grad {grad_err:.1e}")
    assert err < 1e-5 and grad_err < 1e-5
    assert (gather_sequence(out.detach(), group) - ref).abs().max() < 1e-5


def test_sequence_parallel_attention_equals_single_process():
    _spawn(_attention_worker)


# -------------------------------------------------------------------------- DiT forward + backward

def _dit_worker(rank, world):
    group = dist.group.WORLD
    packed, text, mask, target = _batch()
    for layout in ("full", "factorized"):
        # Reference: one process, the whole batch.
        ref_model = _model(layout)
        ref = ref_model.forward_packed(packed, text, mask)
        ref_loss, ref_per_sample = flow_loss(ref, target, packed.loss_mask, sample_ids=packed.sample_ids,
                                             num_samples=packed.num_samples)
        ref_loss.backward()
        # Sequence parallel: this rank's tokens; gradients averaged over ranks as DDP does.
        model = _model(layout)
        model.enable_sequence_parallel(group)
        local = shard_packed(packed, group)
        out = model.forward_packed(local, text, mask)                                     # [R, S'/P, D]
        loss, per_sample = flow_loss(out, shard_sequence(target, group), local.loss_mask,
                                     sample_ids=local.sample_ids, num_samples=packed.num_samples, group=group)
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        full = gather_sequence(out, group)[:, :packed.tokens.shape[1]]                    # [R, S, D]
        err = (full - ref).abs().max().item()
        bad = [n for (n, p), q in zip(model.named_parameters(), ref_model.parameters()) if not _close(p.grad, q.grad, 1e-4)]
        print(f"rank {rank} {layout}: output max abs error {err:.1e}, grads off: {bad}")
        assert err < 1e-5 and not bad
        assert torch.allclose(per_sample, ref_per_sample, rtol=1e-5, equal_nan=True)
        assert ref.abs().mean() > 0.1 and all(p.grad.abs().max() > 0 for p in model.parameters())


def test_dit_forward_backward_sequence_parallel_equals_single_process():
    _spawn(_dit_worker)


# -------------------------------------------------------------------------- FSDP2 + SP step, checkpoint

def _fsdp_worker(rank, world, out_dir):
    from patchflow.training.distributed import DistInfo, full_state_dict, wrap_model
    from patchflow.weights import save_component

    mesh = sequence_parallel_mesh(world, "cpu")  # ("dp", "sp") = (1, 2): FSDP over the world, SP group = world
    group = mesh["sp"].get_group()
    packed, text, mask, target = _batch()
    model = _model()
    model.enable_sequence_parallel(group)
    model = wrap_model(model, DistInfo(rank, world), "fsdp")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    local = shard_packed(packed, group)
    out = model.forward_packed(local, text, mask)
    loss, _ = flow_loss(out, shard_sequence(target, group), local.loss_mask, sample_ids=local.sample_ids,
                        num_samples=packed.num_samples, group=group)
    loss.backward()
    optimizer.step()
    full_loss = loss.detach().clone()
    dist.all_reduce(full_loss)  # the P shares, each x P: sum / P is the batch's loss
    state = full_state_dict(model)  # get_model_state_dict(full_state_dict=True, cpu_offload=True): collective
    with torch.no_grad():
        after = gather_sequence(model.eval().forward_packed(local, text, mask), group)[:, :packed.tokens.shape[1]]
    if rank == 0:
        save_component(out_dir, model.config, state)
        torch.save({"out": after, "loss": full_loss / world}, os.path.join(out_dir, "sp_result.pt"))


def test_fsdp2_sequence_parallel_step_and_checkpoint(tmp_path):
    _spawn(_fsdp_worker, str(tmp_path))
    packed, text, mask, target = _batch()
    # The same step on one process, no sharding of any kind.
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loss, _ = flow_loss(model.forward_packed(packed, text, mask), target, packed.loss_mask,
                        sample_ids=packed.sample_ids, num_samples=packed.num_samples)
    loss.backward()
    optimizer.step()
    result = torch.load(tmp_path / "sp_result.pt", weights_only=True)
    loaded = DiT.from_pretrained(tmp_path).eval()  # the FSDP checkpoint in a plain DiT on 1 process
    for (name, p), q in zip(loaded.named_parameters(), model.parameters()):
        assert _close(p, q, 1e-4), name
    with torch.no_grad():
        plain = loaded.forward_packed(packed, text, mask)
    assert loaded.sp_group is None and (plain - result["out"]).abs().max() < 1e-5
    assert abs(result["loss"].item() - loss.item()) < 1e-5


# -------------------------------------------------------------------------- errors

def test_bad_inputs_raise():
    model = DiT(dit_config("tiny", in_channels=4, text_dim=TEXT_DIM))  # 4 heads
    with pytest.raises(ValueError, match="must divide num_heads 4"):
        check_heads(model, 3)
    with pytest.raises(RuntimeError, match="initialised torch.distributed"):
        shard_sequence(torch.zeros(1, 4), None)
    with pytest.raises(ValueError, match="positive divisor of the world size"):
        sequence_parallel_mesh(0)
