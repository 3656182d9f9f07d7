"""One attention entry for packed rows, with interchangeable backends.

    attention(q, k, v, q_ids, kv_ids, backend="auto") -> out [R, H, Sq, Dh]

q [R, H, Sq, Dh], k/v [R, H, Sk, Dh], q_ids [R, Sq], kv_ids [R, Sk] (long). Query i
attends to key j of the same row only where q_ids[i] == kv_ids[j] and q_ids[i] >= 0:
a block-diagonal "document" mask, so samples packed into one row never see each
other, and id -1 marks padding. A query with no key (padding, or a sample whose
text is empty) gets zeros, never NaN. For cross-attention to text, the text
tokens of sample b carry id b and padded text positions -1.

Backends (all give the same result; tests hold them to the naive loop):
    "naive"   per-(row, id) loop with an explicit fp32 softmax: the reference.
    "dense"   one batched masked attention over whole rows, [R, H, Sq, Sk] scores in plain
              matmuls with an fp32 softmax: wastes the masked pairs, but it is a handful of
              large ops whose backward is two more matmuls. On CPU that beats the fused
              kernels by 3-4x for short rows (benchmarks/RESULTS.md, "The training loop").
    "sdpa"    F.scaled_dot_product_attention with a dense bool mask [R, 1, Sq, Sk]:
              simple, any device, but spends O(Sq*Sk) work on masked pairs.
    "flex"    torch.nn.attention.flex_attention with a block-sparse document BlockMask:
              compiled (fused, skips empty blocks) on CUDA; eager on CPU, where torch
              2.13 materialises the scores and has no backward (inference only).
    "varlen"  variable-length attention over the (row, id) groups, no mask at all: on CUDA
              with fp16/bf16 the flash varlen kernel (torch.nn.attention.varlen or the
              flash-attn package, detected, never required); elsewhere groups of equal
              (q, k) length are gathered into batches, one SDPA call per distinct length.
    "auto"    CUDA: "varlen" when a flash varlen kernel serves the dtype, else "flex".
              CPU and other devices, training (grad enabled): "dense" while the rows are short
              (R * Sq * Sk up to DENSE_MAX_PAIRS score pairs), else "varlen". Without grad
              (sampling) "dense" only for rows of up to DENSE_MAX_ROW_PAIRS_NO_GRAD pairs: there
              the fused SDPA forward is 3x faster at 1280 tokens, and dense only at ~80.

The mask metadata depends only on the ids, so a model builds one `AttentionPlan`
per forward with `make_plan` and reuses it in every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "dense", "sdpa", "flex", "varlen", "naive")
# "auto" on CPU uses "dense" up to this many (row, query, key) score pairs: 4M pairs are 16 MB of
# fp32 scores per head, e.g. 32 rows of 362 tokens, or the 2 x 1280 tokens of a guided 17x256x256 clip.
DENSE_MAX_PAIRS = 1 << 22
DENSE_MAX_ROW_PAIRS_NO_GRAD = 256 * 256  # per row, without grad (generation): see "auto" above


def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
        return varlen_attn
    except ImportError:
        return None


def _flash_attn_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
        return flash_attn_varlen_func
    except ImportError:
        return None


def varlen_kernel_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """True where a fused flash varlen kernel can run (CUDA, fp16/bf16, torch's or flash-attn's)."""
    return (torch.device(device).type == "cuda" and dtype in (torch.float16, torch.bfloat16)
            and (_torch_varlen() is not None or _flash_attn_varlen() is not None))


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype = torch.float32,
                    shape: tuple[int, int, int] = (1, 1, 1), grad: bool = True) -> str:
    """The concrete backend "auto" stands for on this device and dtype, for rows, query and key
    lengths `shape` = (R, Sq, Sk), with or without autograd (see module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if torch.device(device).type == "cuda":
        return "varlen" if varlen_kernel_available(device, dtype) else "flex"
    r, sq, sk = shape
    short = r * sq * sk <= DENSE_MAX_PAIRS and (grad or sq * sk <= DENSE_MAX_ROW_PAIRS_NO_GRAD)
    return "dense" if short else "varlen"


@dataclass
class AttentionPlan:
    """Mask metadata for one (q_ids, kv_ids) pair, built once and reused by every layer."""

    backend: str
    q_ids: torch.Tensor                       # [R, Sq]
    kv_ids: torch.Tensor                      # [R, Sk]
    trivial: bool = False                     # one id per row, no padding: no mask at all
    mask: torch.Tensor | None = None          # sdpa, dense: [R, 1, Sq, Sk] bool
    has_key: torch.Tensor | None = None       # sdpa, dense: [R, 1, Sq, 1] bool, query has >= 1 key
    block_mask: object | None = None          # flex: BlockMask
    buckets: list = field(default_factory=list)  # varlen fallback: [(q_index [n, lq], k_index [n, lk])]
    q_tokens: torch.Tensor | None = None      # varlen kernel: flat query positions, grouped
    k_tokens: torch.Tensor | None = None      # varlen kernel: flat key positions, grouped
    cu_q: torch.Tensor | None = None          # varlen kernel: [G + 1] int32
    cu_k: torch.Tensor | None = None
    max_q: int = 0
    max_k: int = 0


def _check_ids(q_ids: torch.Tensor, kv_ids: torch.Tensor) -> None:
    if q_ids.dim() != 2 or kv_ids.dim() != 2 or q_ids.shape[0] != kv_ids.shape[0]:
        raise ValueError(f"q_ids and kv_ids must be [R, Sq] and [R, Sk] with the same R, got "
                         f"{tuple(q_ids.shape)} and {tuple(kv_ids.shape)}")
    if q_ids.dtype.is_floating_point or kv_ids.dtype.is_floating_point:
        raise TypeError(f"ids must be integer tensors, got {q_ids.dtype} and {kv_ids.dtype}")


def _groups(ids: torch.Tensor, base: int):
    """Group the valid positions of ids [R, S] by (row, id): flat positions sorted by group, group keys,
    start offsets and counts. key = row * base + id, so keys sort by row then id."""
    s = ids.shape[1]
    flat = ids.reshape(-1)
    pos = (flat >= 0).nonzero().squeeze(1)                       # valid flat positions r*S + s
    keys = torch.div(pos, s, rounding_mode="floor") * base + flat[pos]
    order = torch.argsort(keys, stable=True)
    keys, pos = keys[order], pos[order]
    ukeys, counts = torch.unique_consecutive(keys, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return pos, ukeys, starts, counts


def _varlen_plan(plan: AttentionPlan) -> None:
    base = int(max(plan.q_ids.max(), plan.kv_ids.max(), 0)) + 1
    q_pos, q_keys, q_starts, q_counts = _groups(plan.q_ids, base)
    k_pos, k_keys, k_starts, k_counts = _groups(plan.kv_ids, base)
    q_sel, k_sel = torch.isin(q_keys, k_keys), torch.isin(k_keys, q_keys)  # groups present on both sides
    if varlen_kernel_available(plan.q_ids.device, torch.float16):
        # Tokens of the matched groups, group after group; both sides sorted by key, so aligned.
        plan.q_tokens = q_pos[q_sel.repeat_interleave(q_counts)]
        plan.k_tokens = k_pos[k_sel.repeat_interleave(k_counts)]
        zero = q_counts.new_zeros(1)
        plan.cu_q = torch.cat([zero, q_counts[q_sel].cumsum(0)]).int()
        plan.cu_k = torch.cat([zero, k_counts[k_sel].cumsum(0)]).int()
        plan.max_q = int(q_counts[q_sel].max()) if q_sel.any() else 0
        plan.max_k = int(k_counts[k_sel].max()) if k_sel.any() else 0
    q_starts, q_counts = q_starts[q_sel], q_counts[q_sel]
    k_starts, k_counts = k_starts[k_sel], k_counts[k_sel]
    if len(q_counts) == 0:
        return
    # Fallback: batch together the groups of equal (lq, lk); one SDPA call per distinct pair.
    pairs, inverse = torch.unique(torch.stack([q_counts, k_counts], 1), dim=0, return_inverse=True)
    for j, (lq, lk) in enumerate(pairs.tolist()):
        g = (inverse == j).nonzero().squeeze(1)
        q_index = q_pos[q_starts[g, None] + torch.arange(lq, device=q_pos.device)]  # [n, lq] flat r*Sq+s
        k_index = k_pos[k_starts[g, None] + torch.arange(lk, device=k_pos.device)]  # [n, lk] flat r*Sk+s
        plan.buckets.append((q_index, k_index))


def _flex_block_mask(q_ids: torch.Tensor, kv_ids: torch.Tensor, dense: torch.Tensor, block: int = 128):
    """A flex BlockMask for the document mask, built from the dense mask [R, Sq, Sk] (fast, exact)
    instead of create_block_mask's vmap over every (q, k) pair, which is slow on CPU."""
    from torch.nn.attention.flex_attention import BlockMask

    r, sq, sk = dense.shape
    nq, nk = math.ceil(sq / block), math.ceil(sk / block)
    padded = F.pad(dense, (0, nk * block - sk, 0, nq * block - sq))
    per_block = padded.view(r, nq, block, nk, block).sum((2, 4))       # [R, nq, nk] allowed pairs
    full = per_block == block * block
    partial = (per_block > 0) & ~full

    def ordered(blocks: torch.Tensor):  # dense [R, nq, nk] bool -> (counts, indices) for from_kv_blocks
        blocks = blocks[:, None].to(torch.int32)                         # [R, 1, nq, nk]
        counts = blocks.sum(-1, dtype=torch.int32)
        indices = torch.argsort(blocks, dim=-1, descending=True, stable=True).to(torch.int32)
        return counts, indices

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_ids[b, q_idx] == kv_ids[b, kv_idx]) & (q_ids[b, q_idx] >= 0)

    counts, indices = ordered(partial)
    full_counts, full_indices = ordered(full)
    return BlockMask.from_kv_blocks(counts, indices, full_counts, full_indices, BLOCK_SIZE=block,
                                    mask_mod=mask_mod, seq_lengths=(sq, sk))


def make_plan(q_ids: torch.Tensor, kv_ids: torch.Tensor | None = None, backend: str = "auto",
              dtype: torch.dtype = torch.float32) -> AttentionPlan:
    """Build the mask metadata for `attention`: q_ids [R, Sq], kv_ids [R, Sk] (None = q_ids).

    dtype is the compute dtype of q (the autocast dtype under autocast); "auto" depends on it.
    """
    kv_ids = q_ids if kv_ids is None else kv_ids
    _check_ids(q_ids, kv_ids)
    shape = (q_ids.shape[0], q_ids.shape[1], kv_ids.shape[1])
    plan = AttentionPlan(resolve_backend(backend, q_ids.device, dtype, shape, torch.is_grad_enabled()), q_ids, kv_ids)
    if plan.backend in ("sdpa", "dense", "varlen"):
        # One id per row, same on both sides and no padding: no mask needed at all.
        plan.trivial = bool((q_ids >= 0).all() and (kv_ids >= 0).all()
                            and (q_ids == q_ids[:, :1]).all() and (kv_ids == q_ids[:, :1]).all())
        if plan.trivial:
            return plan
    if plan.backend in ("sdpa", "dense", "flex"):
        dense = (q_ids[:, :, None] == kv_ids[:, None, :]) & (q_ids[:, :, None] >= 0)  # [R, Sq, Sk]
        if plan.backend in ("sdpa", "dense"):
            plan.has_key = dense.any(-1)[:, None, :, None]                  # [R, 1, Sq, 1]
            # A query with no key would softmax over nothing (NaN): let it see everything, then zero it.
            plan.mask = dense[:, None] | ~plan.has_key                      # [R, 1, Sq, Sk]
            if plan.backend == "dense" and bool(plan.has_key.all()):
                plan.has_key = None                                         # nothing to zero
        else:
            plan.block_mask = _flex_block_mask(q_ids, kv_ids, dense)
    elif plan.backend == "varlen":
        _varlen_plan(plan)
    return plan


_compiled_flex = None


def _flex(q, k, v, block_mask, scale):
    """flex_attention, compiled on CUDA (a fused block-sparse kernel), eager elsewhere."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask, scale=scale)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise NotImplementedError("attention backend 'flex' has no backward on CPU in this torch "
                                  f"({torch.__version__}): use 'varlen' or 'sdpa' for training")
    q, k, v = q.detach(), k.detach(), v.detach()  # torch refuses CPU inputs that require grad, even under no_grad
    import warnings
    with warnings.catch_warnings():  # eager flex warns that it materialises scores: known, it is the CPU path
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale)


def _naive(q, k, v, plan: AttentionPlan, scale: float) -> torch.Tensor:
    """Reference: loop over rows and ids, explicit softmax in fp32."""
    out = torch.zeros_like(q)
    for r in range(q.shape[0]):
        for i in plan.q_ids[r].unique().tolist():
            if i < 0:
                continue
            qi = (plan.q_ids[r] == i).nonzero().squeeze(1)
            ki = (plan.kv_ids[r] == i).nonzero().squeeze(1)
            if len(ki) == 0:
                continue  # no keys: zeros
            scores = (q[r][:, qi].float() @ k[r][:, ki].float().transpose(-1, -2)) * scale  # [H, nq, nk]
            o = scores.softmax(-1) @ v[r][:, ki].float()                                   # [H, nq, Dh]
            out[r, :, qi] = o.to(q.dtype)
    return out


def _dense(q, k, v, plan: AttentionPlan, scale: float) -> torch.Tensor:
    """Whole rows at once: scores [R, H, Sq, Sk] in q's dtype, masked softmax in fp32, then p @ v."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale     # [R, H, Sq, Sk]
    if plan.mask is not None:
        scores = scores.masked_fill_(~plan.mask, float("-inf"))         # mul's backward needs no output
    out = torch.matmul(scores.softmax(-1).to(v.dtype), v)             # [R, H, Sq, Dh]
    return out if plan.has_key is None else out * plan.has_key       # queries without keys: 0


def _varlen(q, k, v, plan: AttentionPlan, scale: float) -> torch.Tensor:
    r, h, sq, dh = q.shape
    qf = q.transpose(1, 2).reshape(r * sq, h, dh)                 # [R*Sq, H, Dh] token-major
    kf = k.transpose(1, 2).reshape(-1, h, dh)                     # [R*Sk, H, Dh]
    vf = v.transpose(1, 2).reshape(-1, h, dh)
    if plan.q_tokens is not None and varlen_kernel_available(q.device, q.dtype):
        qs, ks, vs = qf[plan.q_tokens], kf[plan.k_tokens], vf[plan.k_tokens]  # [Tq|Tk, H, Dh]
        kernel = _torch_varlen()
        if kernel is not None:
            o = kernel(qs, ks, vs, plan.cu_q, plan.cu_k, plan.max_q, plan.max_k, scale=scale)
        else:
            o = _flash_attn_varlen()(qs, ks, vs, plan.cu_q, plan.cu_k, plan.max_q, plan.max_k, softmax_scale=scale)
        index, values = plan.q_tokens, o
    else:
        indices, outs = [], []
        for q_index, k_index in plan.buckets:
            qb = qf[q_index].transpose(1, 2)                      # [n, H, lq, Dh]
            kb, vb = kf[k_index].transpose(1, 2), vf[k_index].transpose(1, 2)  # [n, H, lk, Dh]
            ob = F.scaled_dot_product_attention(qb, kb, vb, scale=scale)
            outs.append(ob.transpose(1, 2).reshape(-1, h, dh))    # [n*lq, H, Dh]
            indices.append(q_index.reshape(-1))
        if not outs:
            return torch.zeros_like(q)
        index, values = torch.cat(indices), torch.cat(outs)
    out = qf.new_zeros(r * sq, h, dh).index_copy(0, index, values.to(q.dtype))  # queries without keys stay 0
    return out.view(r, sq, h, dh).transpose(1, 2)                 # [R, H, Sq, Dh]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_ids: torch.Tensor | None = None,
              kv_ids: torch.Tensor | None = None, backend: str = "auto", plan: AttentionPlan | None = None,
              scale: float | None = None) -> torch.Tensor:
    """Block-diagonal (document-masked) attention; see the module docstring.

    q [R, H, Sq, Dh], k/v [R, H, Sk, Dh]; either ids (q_ids [R, Sq], kv_ids [R, Sk], kv_ids None =
    q_ids) or a `plan` from `make_plan`. Returns [R, H, Sq, Dh]; queries with no key give zeros.
    """
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention needs q [R, H, Sq, Dh] and k, v [R, H, Sk, Dh], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if plan is None:
        if q_ids is None:
            raise ValueError("attention needs q_ids (and kv_ids) or a plan from make_plan")
        plan = make_plan(q_ids, kv_ids, backend, q.dtype)
    if plan.q_ids.shape != (q.shape[0], q.shape[2]) or plan.kv_ids.shape != (k.shape[0], k.shape[2]):
        raise ValueError(f"ids {tuple(plan.q_ids.shape)}, {tuple(plan.kv_ids.shape)} do not match q "
                         f"{tuple(q.shape)} and k {tuple(k.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if plan.backend == "dense":  # plain tensor ops: torch.compile traces and fuses it with the block
        return _dense(q, k, v, plan, scale)
    return _masked_kernels(q, k, v, plan, scale)


def _masked_kernels(q, k, v, plan: AttentionPlan, scale: float) -> torch.Tensor:
    """The backends other than "dense" (each with data-dependent Python: kept out of compiled graphs)."""
    if plan.trivial:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if plan.backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=plan.mask, scale=scale)
        return out * plan.has_key
    if plan.backend == "flex":
        return _flex(q, k, v, plan.block_mask, scale)
    if plan.backend == "varlen":
        return _varlen(q, k, v, plan, scale)
    return _naive(q, k, v, plan, scale)


def keep_eager_under_compile() -> None:
    """Exclude the data-dependent backends from torch.compile graphs (a graph break on each side);
    "dense" stays in the graph, where inductor fuses its mask, scale and softmax.

    Called by DiT.compile_blocks rather than applied as a decorator, because
    `torch.compiler.disable` imports torch._dynamo (~1.2 s) and generation should not pay that.
    `attention` reaches the function as a module global, so the rebinding takes effect.
    """
    global _masked_kernels
    if not getattr(_masked_kernels, "_patchflow_eager", False):
        _masked_kernels = torch.compiler.disable(_masked_kernels)
        _masked_kernels._patchflow_eager = True
