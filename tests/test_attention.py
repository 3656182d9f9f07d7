"""Every attention backend against the naive per-(row, id) loop."""

import pytest
import torch

from patchflow.models.attention import DENSE_MAX_PAIRS, attention, make_plan, resolve_backend

FAST = ["dense", "sdpa", "flex", "varlen"]
TRAINABLE = ["dense", "sdpa", "varlen"]  # flex has no backward on CPU in torch 2.13


def _ids():
    """Three rows: two samples + padding; one sample filling the row; a short sample, a long one, padding."""
    ids = torch.full((3, 40), -1)
    ids[0, :11], ids[0, 11:30] = 0, 3
    ids[1, :] = 1
    ids[2, :3], ids[2, 3:35] = 2, 4
    return ids


def _qkv(r, h, sq, sk, dh=16, grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(r, h, s, dh, generator=gen).requires_grad_(grad) for s in (sq, sk, sk)]


@pytest.mark.parametrize("backend", FAST + ["auto"])
def test_self_attention_matches_naive(backend):
    ids = _ids()
    q, k, v = _qkv(3, 2, 40, 40)
    ref = attention(q, k, v, ids, ids, backend="naive")
    out = attention(q, k, v, ids, ids, backend=backend)
    assert (out - ref).abs().max() < 1e-5
    assert (out.transpose(1, 2)[ids < 0] == 0).all()  # padding queries: zeros


def test_naive_matches_a_plain_per_sample_softmax():
    ids = _ids()
    q, k, v = _qkv(3, 2, 40, 40)
    out = attention(q, k, v, ids, ids, backend="naive")
    sel = ids[2] == 4
    qs, ks, vs = q[2][:, sel], k[2][:, sel], v[2][:, sel]  # one sample alone, no mask
    want = torch.softmax(qs @ ks.transpose(-1, -2) / 4.0, -1) @ vs
    assert (out[2][:, sel] - want).abs().max() < 1e-5


@pytest.mark.parametrize("backend", FAST)
def test_cross_attention_to_text_matches_naive(backend):
    ids = _ids()
    text_ids = torch.full((3, 9), -1)
    text_ids[0, :4], text_ids[0, 4:6] = 0, 3
    text_ids[1, :7] = 1
    text_ids[2, :5] = 4  # sample 2 has no text at all: its queries must get zeros, not NaN
    q, k, v = _qkv(3, 2, 40, 9)
    ref = attention(q, k, v, ids, text_ids, backend="naive")
    out = attention(q, k, v, ids, text_ids, backend=backend)
    assert not out.isnan().any()
    assert (out - ref).abs().max() < 1e-5
    assert (out[2][:, ids[2] == 2] == 0).all()


@pytest.mark.parametrize("backend", TRAINABLE)
def test_gradients_match_naive(backend):
    ids = _ids()
    grads = {}
    for name in ("naive", backend):
        q, k, v = _qkv(3, 2, 40, 40, grad=True)
        out = attention(q, k, v, ids, ids, backend=name)
        (out * torch.linspace(-1, 1, 16)).sum().backward()
        grads[name] = [t.grad for t in (q, k, v)]
    for a, b in zip(grads["naive"], grads[backend]):
        assert not b.isnan().any() and (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("backend", ["naive", "dense", "sdpa", "flex", "varlen"])
def test_padding_rows_give_no_nan(backend):
    ids = torch.full((2, 16), -1)
    ids[0, :5] = 0  # row 1 is pure padding
    grad = backend in TRAINABLE
    q, k, v = _qkv(2, 2, 16, 16, grad=grad)
    out = attention(q, k, v, ids, ids, backend=backend)
    assert not out.isnan().any() and (out[1] == 0).all()
    if grad:
        out.sum().backward()
        assert not any(t.grad.isnan().any() for t in (q, k, v))


def test_many_small_groups_are_batched_by_length():
    # Factorized temporal attention: many groups of a few tokens, ids not contiguous in the row.
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(-1, 30, (2, 64), generator=gen)
    q, k, v = _qkv(2, 3, 64, 64)
    plan = make_plan(ids, ids, "varlen")
    assert len(plan.buckets) < 30  # one SDPA call per distinct group length, not per group
    ref = attention(q, k, v, ids, ids, backend="naive")
    for backend in FAST:
        assert (attention(q, k, v, ids, ids, backend=backend) - ref).abs().max() < 1e-5


def test_trivial_rows_use_plain_sdpa():
    ids = torch.tensor([[0] * 8, [1] * 8])
    assert make_plan(ids, ids, "varlen").trivial and make_plan(ids, ids, "dense").trivial
    q, k, v = _qkv(2, 2, 8, 8)
    ref = attention(q, k, v, ids, ids, backend="naive")
    assert (attention(q, k, v, ids, ids) - ref).abs().max() < 1e-5


def test_backend_rules_and_errors():
    assert resolve_backend("auto", "cpu") == "dense"  # short rows: one batched masked attention
    assert resolve_backend("auto", "cpu", shape=(1, 2048, 2049)) == "varlen"  # long rows: no wasted pairs
    assert DENSE_MAX_PAIRS < 2048 * 2049
    assert resolve_backend("auto", "cpu", shape=(2, 80, 80), grad=False) == "dense"  # sampling short clips
    assert resolve_backend("auto", "cpu", shape=(2, 1280, 1280), grad=False) == "varlen"  # the fused forward
    assert resolve_backend("sdpa", "cpu") == "sdpa"
    with pytest.raises(ValueError, match="attention backend must be one of"):
        resolve_backend("fast", "cpu")
    q, k, v = _qkv(1, 2, 8, 8, grad=True)
    ids = torch.zeros(1, 8, dtype=torch.long)
    ids[0, 4:] = 1
    with pytest.raises(NotImplementedError, match="no backward on CPU"):
        attention(q, k, v, ids, ids, backend="flex")
    with torch.no_grad():  # inference with parameters that require grad: fine
        assert (attention(q, k, v, ids, ids, backend="flex") - attention(q, k, v, ids, ids, backend="naive")).abs().max() < 1e-5
    with pytest.raises(ValueError, match="do not match"):
        attention(q, k, v, ids[:, :4], ids[:, :4])
    with pytest.raises(TypeError, match="integer"):
        attention(q, k, v, ids.float(), ids.float())
