"""Flow matching: the rectified-flow objective, timestep sampling and the samplers.

Model-agnostic in the spirit of minRF's `rf.py`: everything here wraps any
`model_fn(x, t, cond) -> v` and works on any tensor layout whose leading dims
are indexed by t:

    unpadded video   x0 [B, C, T, H, W]   t [B]        (one noise level per sample)
    packed tokens    x0 [R, S, D]         t [R, S]     (one noise level per token)

A t of fewer dims than x is broadcast by appending singleton dims, so t is
always a *prefix* of x's shape. Per-token t is what lets condition frames stay
clean (t = 0) inside a noisy clip.

Objective (rectified flow, t = 0 clean, t = 1 noise), all of it in `flow_matching_loss`:
    x_t = (1 - t) * x0 + t * eps          v = dx_t/dt = eps - x0          loss = |model(x_t, t) - v|^2

Timesteps: logit-normal, t = sigmoid(m + s * n), n ~ N(0, 1) (SD3, Esser et al.
2024, §3.1), then the resolution-dependent shift of SD3 §5.3.2:
    t' = shift * t / (1 + (shift - 1) * t),    shift = sqrt(tokens / base_tokens)
clamped to [1, shift_max]. More tokens carry more redundant signal, so the same
noise level destroys less of the content; the shift moves t toward 1 to keep
the effective signal-to-noise ratio comparable across lengths and resolutions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass
class FlowConfig:
    """Objective and schedule settings; sampler step counts live with the pipeline."""

    t_mean: float = 0.0            # logit-normal location m; 0 centres training on t = 0.5
    t_std: float = 1.0             # logit-normal scale s; 1.0 as in SD3
    shift_base_tokens: int = 256   # token count with no shift (e.g. 17x64x64 -> 5x16x16 latent, 2x2 patches = 320)
    shift_max: float = 6.0         # cap: very long sequences would otherwise push nearly all t to 1
    fixed_shift: float = 0.0       # > 0: use this shift for every length instead of the token rule
    loss_weighting: str = "sample"  # "sample": each sample counts equally; "token": each token does
    object_weight: float = 0.0     # > 0: tokens unlike their frame's background weigh 1 + this in the loss
    object_threshold: float = 2.5  # such a token lies this many times the frame's median distance from its median token
    frame_noise_share: float = 0.0  # share of each token's noise variance common to its (h, w) in every frame (PYoCo)
    noisy_share: float = 0.0       # share of samples whose t is drawn uniformly from [noisy_from, 1] instead: the
    noisy_from: float = 0.9        # noisy end, where sampling lays out the scene from the caption alone, gets 1.4%
                                   # of logit-normal(0, 1) draws, and the layout is learned only there

    def __post_init__(self) -> None:
        if not 0.0 <= self.frame_noise_share < 1.0:
            raise ValueError(f"flow.frame_noise_share must be in [0, 1), got {self.frame_noise_share}")
        if not 0.0 <= self.noisy_share <= 1.0:
            raise ValueError(f"flow.noisy_share must be in [0, 1], got {self.noisy_share}")
        if not 0.0 <= self.noisy_from < 1.0:
            raise ValueError(f"flow.noisy_from must be in [0, 1), got {self.noisy_from}")


# ---------------------------------------------------------------- shapes
def expand_t(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """View `t` (a prefix of x's shape, or a scalar) with trailing singleton dims to broadcast against `x`.

    Floating t takes x's dtype; bool and integer tensors (masks, ids) keep theirs.
    """
    t = torch.as_tensor(t, device=x.device)
    if t.is_floating_point():
        t = t.to(x.dtype)
    if t.dim() > x.dim() or any(a not in (b, 1) for a, b in zip(t.shape, x.shape)):
        raise ValueError(f"t of shape {tuple(t.shape)} must be a prefix of x's shape {tuple(x.shape)} "
                         "(e.g. t [B] for x [B,C,T,H,W], or t [R,S] for x [R,S,D])")
    return t.reshape(*t.shape, *([1] * (x.dim() - t.dim())))  # (*t.shape, 1, ..., 1)


# ---------------------------------------------------------------- objective
def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The point on the straight path: x_t = (1 - t) x0 + t noise. Shapes: x0, noise [N, ...]; t a prefix of them."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    t = expand_t(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target v = noise - x0 (constant along each straight path)."""
    return noise - x0


def shift_for_tokens(num_tokens: int | torch.Tensor, cfg: FlowConfig) -> float | torch.Tensor:
    """SD3 §5.3.2 shift, sqrt(tokens / base_tokens) clamped to [1, shift_max]; cfg.fixed_shift overrides."""
    if cfg.fixed_shift > 0:
        if torch.is_tensor(num_tokens):
            return torch.full(num_tokens.shape, cfg.fixed_shift)
        return cfg.fixed_shift
    if cfg.shift_base_tokens <= 0:
        raise ValueError(f"shift_base_tokens must be positive, got {cfg.shift_base_tokens}")
    if torch.is_tensor(num_tokens):
        return (num_tokens.float() / cfg.shift_base_tokens).sqrt().clamp(1.0, cfg.shift_max)
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    return min(max(math.sqrt(num_tokens / cfg.shift_base_tokens), 1.0), cfg.shift_max)


def shift_time(t: torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
    """t' = shift t / (1 + (shift - 1) t): a monotone map of [0, 1] onto itself, toward 1 when shift > 1."""
    return shift * t / (1 + (shift - 1) * t)


def unshift_time(t: torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
    """Inverse of `shift_time`: t = t' / (shift - (shift - 1) t')."""
    return t / (shift - (shift - 1) * t)


def sample_timesteps(n: int, cfg: FlowConfig, num_tokens: int | torch.Tensor | None = None,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Per-sample training noise levels [n]: logit-normal, then shifted for each sample's token count,
    then a share `cfg.noisy_share` of them replaced by uniform draws from [cfg.noisy_from, 1].

    `num_tokens` is an int (all samples alike) or a tensor [n] (packed batches of mixed lengths);
    None applies only cfg.fixed_shift (if set). Drawn on CPU so a seed gives the same t on any device.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if cfg.t_std <= 0:
        raise ValueError(f"t_std must be positive, got {cfg.t_std}")
    t = torch.sigmoid(cfg.t_mean + cfg.t_std * torch.randn(n, generator=generator))
    if num_tokens is not None:
        tokens = torch.as_tensor(num_tokens).cpu()
        if tokens.dim() and tokens.shape != (n,):
            raise ValueError(f"num_tokens must be an int or a tensor of shape [{n}], got {tuple(tokens.shape)}")
        t = shift_time(t, shift_for_tokens(tokens, cfg))
    elif cfg.fixed_shift > 0:
        t = shift_time(t, cfg.fixed_shift)
    if cfg.noisy_share > 0:  # draws nothing more when off, so earlier runs' timesteps stay as they were
        pick = torch.rand(n, generator=generator) < cfg.noisy_share
        t = torch.where(pick, cfg.noisy_from + (1 - cfg.noisy_from) * torch.rand(n, generator=generator), t)
    return t.to(device) if device is not None else t


def share_noise_over_frames(noise: torch.Tensor, coords: torch.Tensor, sample_ids: torch.Tensor, share: float,
                            draw: Callable[[tuple], torch.Tensor]) -> torch.Tensor:
    """The mixed noise prior of PYoCo (Ge et al. 2023) on packed tokens: every frame of a sample
    starts from partly the same noise, so its frames begin alike and only have to differ.

    noise [R, S, D] independent N(0, 1) per token; coords [R, S, 3] (t, h, w); sample_ids [R, S]
    (-1 = padding); draw(shape) -> the shared N(0, 1) draw `shared` of that shape (N samples, Hmax,
    Wmax, D): one per sample and spatial position (the caller's generator, so seeds hold).
    Returns sqrt(1 - share) * noise + sqrt(share) * shared[sample, h, w]: still N(0, 1) per
    element, with correlation `share` between the tokens of one position in different frames.
    share = 0 returns `noise` itself and draws nothing.
    """
    if share == 0:
        return noise
    valid = sample_ids >= 0
    shape = (int(sample_ids.max()) + 1, int(coords[..., 1][valid].max()) + 1, int(coords[..., 2][valid].max()) + 1,
             noise.shape[-1])
    ids = sample_ids.clamp(min=0)
    common = draw(shape).to(noise.device, noise.dtype)[ids, coords[..., 1], coords[..., 2]]  # (R, S, D)
    return (1 - share) ** 0.5 * noise + share ** 0.5 * common


def flow_matching_loss(model_fn: ModelFn, x0: torch.Tensor, t: torch.Tensor, cond: Any = None, *,
                       generator: torch.Generator | None = None, loss_mask: torch.Tensor | None = None,
                       sample_ids: torch.Tensor | None = None, num_samples: int | None = None,
                       weighting: str = "sample", shard: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       group=None, mix_noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training objective, whole (minRF's `forward`): noise, the point x_t, the model's velocity, masked MSE.

    x0 [N, ...] clean data (packed tokens [R, S, D]); t the noise levels, a prefix of x0's shape
    (per token [R, S], so condition tokens can stay clean with t = 0); model_fn(x_t, t, cond) -> v.
    The noise is drawn on CPU from `generator`, so a seed gives the same loss on any device.
    loss_mask, sample_ids, num_samples, weighting: as in `flow_loss`, for the elements model_fn sees.
    Sequence parallelism: `shard` cuts full rows [R, S, ...] to this rank's part (x_t, t and the
    target, before the model), loss_mask and sample_ids are given as this rank's part, and `group`
    is the ranks that share the rows (see `flow_loss`). mix_noise: noise -> the noise used (e.g.
    `share_noise_over_frames`), applied to the independent draw.
    Returns (loss, per-sample losses [num_samples], detached; NaN for a sample with no generated element).
    """
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)  # (N, ...)
    if mix_noise is not None:
        noise = mix_noise(noise)
    x_t = interpolate(x0, noise, t)
    target = velocity_target(x0, noise)
    if shard is not None:
        x_t, t, target = shard(x_t), shard(t), shard(target)  # (R, S/P, ...): this rank's tokens
    pred = model_fn(x_t, t, cond)
    return flow_loss(pred, target, loss_mask, weighting, sample_ids, num_samples, group)


def flow_loss(pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor | None = None,
              weighting: str = "sample", sample_ids: torch.Tensor | None = None,
              num_samples: int | None = None, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked MSE between predicted and target velocity.

    pred, target [N, ...]; loss_mask (bool or 0/1, a prefix of pred's shape or broadcastable to it)
    is 1 on generated elements and 0 on condition tokens (t = 0), dropped tokens and padding.
    Samples are the leading index N, or, for packed rows holding several samples, the values of
    `sample_ids` (an int tensor shaped like a prefix of pred, ids unique across the whole batch,
    negative = padding, ignored).

    weighting="sample": the mean over a sample's generated elements, then the mean over samples,
        so a 1-frame image counts as much as a 33-frame clip.
    weighting="token": the sum over all generated elements / their count, so every token counts
        equally and long samples weigh more (the plain NaViT-style average).

    Returns (loss scalar, per-sample losses, detached, NaN for a sample with no generated element).
    With `sample_ids`, the per-sample losses are indexed by id when `num_samples` is given (ids in
    [0, num_samples), so a sample that lost all its tokens still has its slot), else they follow
    the sorted distinct ids.

    group: a process group whose P ranks each hold a shard of the same samples (sequence
    parallelism, pred [R, S/P, ...]). Element counts (and, for the report, squared-error sums)
    are summed over the group, so the P shard losses add up to the whole batch's loss, and the
    loss is multiplied by P because DDP/FSDP average gradients where the shards must be summed.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if weighting not in ("sample", "token"):
        raise ValueError(f"weighting must be 'sample' or 'token', got {weighting!r}")
    if group is not None and sample_ids is not None and num_samples is None:
        raise ValueError("flow_loss over a process group needs num_samples, so every rank indexes samples alike")
    err = (pred.float() - target.float()).square()
    mask = torch.ones((), device=err.device) if loss_mask is None else expand_t(loss_mask.float(), err)
    mask = mask.expand_as(err)  # a view: sums below read it without a copy
    if sample_ids is None:
        dims = tuple(range(1, err.dim()))
        sums, counts = (err * mask).sum(dims), mask.sum(dims)  # (N,), (N,)
    else:
        expand_t(sample_ids, err)  # checks that the ids are a prefix of pred's shape
        dims = tuple(range(sample_ids.dim(), err.dim()))
        prefix_sums, prefix_counts = (err * mask).sum(dims), mask.sum(dims)  # (*ids.shape,) each
        valid = sample_ids >= 0  # negative ids: padding, in no sample
        if num_samples is not None:
            inverse, num = sample_ids.long().clamp(min=0), num_samples
            if bool((sample_ids >= num_samples).any()):
                raise ValueError(f"sample_ids must be < num_samples={num_samples}, got max {int(sample_ids.max())}")
        else:
            uniq, inverse = torch.unique(sample_ids, return_inverse=True)
            inverse = (inverse - (uniq < 0).sum()).clamp(min=0)  # ids in [0, num) for the valid ones
            num = int((uniq >= 0).sum())
        sums = torch.zeros(num, device=err.device).index_add_(0, inverse[valid], prefix_sums[valid])
        counts = torch.zeros(num, device=err.device).index_add_(0, inverse[valid], prefix_counts[valid])
    total_sums, total_counts = sums.detach(), counts  # (num_samples,) each: the whole samples'
    if group is not None:
        stats = torch.stack([total_counts, total_sums]).double()  # (2, num_samples)
        dist.all_reduce(stats, group=group)
        total_counts, total_sums = stats[0].to(counts.dtype), stats[1].to(sums.dtype)
    per_sample = sums / total_counts.clamp(min=1)  # (num_samples,) this rank's part of each sample's mean
    has = total_counts > 0
    if weighting == "token":
        loss = sums.sum() / total_counts.sum().clamp(min=1)
    else:  # mean over samples with at least one generated element (no host sync)
        loss = (per_sample * has).sum() / has.sum().clamp(min=1)
    report = torch.where(has, total_sums / total_counts.clamp(min=1), torch.full_like(per_sample, float("nan")))
    if group is not None:
        loss = loss * dist.get_world_size(group)
    return loss, report


def loss_by_t_bin(t: torch.Tensor, per_sample_loss: torch.Tensor, bins: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss per timestep bin for logging (minRF style): bin k covers [k/bins, (k+1)/bins).

    t and per_sample_loss are [N] (one noise level per sample); NaN losses are skipped.
    Returns (mean [bins] with NaN for empty bins, count [bins]); sum mean*count across steps to accumulate.
    """
    if t.shape != per_sample_loss.shape or t.dim() != 1:
        raise ValueError(f"t {tuple(t.shape)} and per_sample_loss {tuple(per_sample_loss.shape)} must both be [N]")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    loss = per_sample_loss.detach().float().cpu()
    keep = ~torch.isnan(loss)
    index = (t.detach().float().cpu()[keep] * bins).long().clamp(0, bins - 1)
    sums = torch.zeros(bins).index_add_(0, index, loss[keep])
    counts = torch.zeros(bins).index_add_(0, index, torch.ones_like(loss[keep]))
    return sums / counts.where(counts > 0, torch.full_like(counts, float("nan"))), counts


# ---------------------------------------------------------------- sampling
def make_noise(shape: tuple[int, ...], seed: int, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on CPU from `seed`, so a seed gives the same video on any device."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)


def timesteps(steps: int, shift: float = 1.0, t_start: float = 1.0) -> torch.Tensor:
    """The sampling schedule [steps + 1], from t_start down to exactly 0.

    Uniform in the unshifted time, then shifted (the same map as training). For SDEdit
    (t_start < 1) the uniform grid starts at unshift(t_start), so all `steps` steps are spent
    below t_start.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    if not 0 < t_start <= 1:
        raise ValueError(f"t_start (strength) must be in (0, 1], got {t_start}")
    u_start = float(unshift_time(torch.tensor(t_start, dtype=torch.float64), shift))
    u = torch.linspace(u_start, 0.0, steps + 1, dtype=torch.float64)
    return shift_time(u, shift).float()


def _cat_cond(cond: Any, uncond: Any) -> Any:
    """Concatenate conditioning along the batch dim: tensors (right-padded with zeros/False to equal
    shape, so text tokens [B,L,D] and masks [B,L] of different lengths line up), tuples, lists, dicts."""
    if cond is None and uncond is None:
        return None
    if torch.is_tensor(cond) and torch.is_tensor(uncond):
        if cond.dim() != uncond.dim() or cond.shape[1:] == uncond.shape[1:]:
            return torch.cat([cond, uncond])
        size = [max(a, b) for a, b in zip(cond.shape[1:], uncond.shape[1:])]
        def pad(x: torch.Tensor) -> torch.Tensor:
            out = x.new_zeros(x.shape[0], *size)
            out[(slice(None), *[slice(0, s) for s in x.shape[1:]])] = x
            return out
        return torch.cat([pad(cond), pad(uncond)])
    if isinstance(cond, (tuple, list)) and isinstance(uncond, (tuple, list)) and len(cond) == len(uncond):
        return type(cond)(_cat_cond(a, b) for a, b in zip(cond, uncond))
    if isinstance(cond, dict) and isinstance(uncond, dict) and cond.keys() == uncond.keys():
        return {k: _cat_cond(cond[k], uncond[k]) for k in cond}
    if cond is uncond or cond == uncond:  # shared non-tensor metadata
        return cond
    raise TypeError(f"cannot batch cond of type {type(cond).__name__} with uncond of type {type(uncond).__name__}")


def guided_velocity(model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, cond: Any, uncond: Any = None,
                    guidance_scale: float = 1.0, batched: bool = True) -> torch.Tensor:
    """Classifier-free guidance: v = v_u + g (v_c - v_u); g = 1 runs the conditional pass only.

    batched=True runs cond and uncond in one forward: x and t are doubled along dim 0 and
    cond/uncond concatenated (see `_cat_cond`). For packed rows the model_fn then receives
    [2R, S, D] with rows R.. carrying the same packing under the uncond text; per-row metadata
    the model_fn closes over (positions, sample ids) must be repeated likewise.
    """
    if guidance_scale == 1.0:
        return model_fn(x, t, cond)
    if batched:
        v = model_fn(torch.cat([x, x]), torch.cat([t, t]), _cat_cond(cond, uncond))
        v_cond, v_uncond = v.chunk(2)
    else:
        v_cond, v_uncond = model_fn(x, t, cond), model_fn(x, t, uncond)
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def check_guidance_interval(interval: Any) -> tuple[float, float]:
    """(lo, hi) with 0 <= lo <= hi <= 1, as floats; a ValueError naming the value otherwise."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two noise levels (lo, hi), got {interval!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance_interval must have 0 <= lo <= hi <= 1, got {interval!r}")
    return lo, hi


@torch.no_grad()
def sample(model_fn: ModelFn, noise: torch.Tensor, steps: int = 30, method: str = "euler", shift: float = 1.0,
           guidance_scale: float = 1.0, cond: Any = None, uncond: Any = None, x_init: torch.Tensor | None = None,
           t_start: float = 1.0, x_cond: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None,
           batched_cfg: bool = True, progress: bool = True,
           callback: Callable[[int, float, torch.Tensor], None] | None = None,
           guidance_interval: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Integrate dx/dt = v from t = t_start to t = 0 and return x at t = 0 (same shape as noise).

    noise [N, ...]: the start (make it with `make_noise(shape, seed)` for reproducible output).
    method: "euler" (steps evaluations) or "heun" (2nd order, 2*steps - 1 evaluations: the last
        step to t = 0 is plain Euler, as in EDM / diffusers, since v at t = 0 is not needed).
    guidance_scale, cond, uncond: classifier-free guidance (uncond = empty or negative prompt).
    guidance_interval (lo, hi): guide only the steps that start at a t in [lo, hi]; the others run
        the conditional pass alone (Kynkaanniemi et al. 2024, "Applying guidance in a limited
        interval": guidance near the clean end adds little but can oversaturate and distort).
    x_init, t_start: SDEdit — start from (1 - t_start) x_init + t_start noise, t_start = strength.
    x_cond [N, ...], cond_mask (bool, a prefix of x's shape): tokens where cond_mask is True are
        clean conditioning (given frames); they are set to x_cond before every model call and
        after every step, and their per-token t is 0. Without cond_mask, model_fn gets t [N]
        (float32); with it, t has cond_mask's shape broadcast to the batch (e.g. [R, S]).
    callback(step, t, x) after each step (t the new time), e.g. for previews.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    if guidance_scale != 1.0 and uncond is None:
        raise ValueError(f"guidance_scale {guidance_scale} needs an uncond (empty or negative prompt) conditioning")
    lo, hi = check_guidance_interval(guidance_interval)
    if (x_cond is None) != (cond_mask is None):
        raise ValueError("x_cond and cond_mask must be given together")
    if x_cond is not None and x_cond.shape != noise.shape:
        raise ValueError(f"x_cond {tuple(x_cond.shape)} must have the noise's shape {tuple(noise.shape)}")
    if x_init is not None and x_init.shape != noise.shape:
        raise ValueError(f"x_init {tuple(x_init.shape)} must have the noise's shape {tuple(noise.shape)}")
    ts = timesteps(steps, shift, t_start).tolist()
    x = noise if x_init is None or t_start == 1.0 else interpolate(x_init.to(noise), noise, t_start)
    if cond_mask is not None:
        cond_mask = cond_mask.to(device=x.device, dtype=torch.bool)
        keep = expand_t(cond_mask, x)  # (N, ..., 1...) broadcast over features
        x_cond = x_cond.to(x)
        t_shape = torch.broadcast_shapes(cond_mask.shape, (x.shape[0],) + (1,) * (cond_mask.dim() - 1))
        free = (~cond_mask).expand(t_shape).float()  # (N, ...) 1 where generated

    def impose(x: torch.Tensor) -> torch.Tensor:
        return x if cond_mask is None else torch.where(keep, x_cond, x)

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        # t stays float32 even for half-precision x: bf16 cannot tell t = 0.996 from 1.0
        t_in = torch.full((x.shape[0],), t, device=x.device) if cond_mask is None else free * t
        scale = guidance_scale if lo <= t <= hi else 1.0
        return guided_velocity(model_fn, x, t_in, cond, uncond, scale, batched_cfg)

    x = impose(x)
    for i in tqdm(range(steps), disable=not progress, desc=f"sampling ({method})", leave=False):
        t_cur, t_next = ts[i], ts[i + 1]
        dt = t_next - t_cur  # negative: integrating from noise toward data
        v = velocity(x, t_cur)
        x_next = x + dt * v
        if method == "heun" and t_next > 0:
            v_next = velocity(impose(x_next), t_next)
            x_next = x + dt * 0.5 * (v + v_next)
        x = impose(x_next)
        if callback is not None:
            callback(i, t_next, x)
    return x
