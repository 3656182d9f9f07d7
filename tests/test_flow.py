"""Flow matching: objective, timestep shift, loss masking and the samplers on analytic flows."""

import math

import pytest
import torch

from patchflow.flow import (
    FlowConfig, expand_t, flow_loss, flow_matching_loss, guided_velocity, interpolate, loss_by_t_bin, make_noise,
    sample, sample_timesteps, share_noise_over_frames, shift_for_tokens, shift_time, timesteps,
    unshift_time, velocity_target,
)
from patchflow.models.patches import pack


# ---------------------------------------------------------------- objective
def test_interpolation_endpoints_and_target_is_path_derivative():
    x0, eps = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    assert torch.equal(interpolate(x0, eps, torch.zeros(3)), x0)  # t = 0 is clean
    assert torch.equal(interpolate(x0, eps, torch.ones(3)), eps)  # t = 1 is noise
    t = torch.tensor([0.2, 0.5, 0.9])
    assert torch.allclose(interpolate(x0, eps, t), (1 - t[:, None, None]) * x0 + t[:, None, None] * eps)
    h = 1e-3  # finite difference of the path equals the target velocity eps - x0
    fd = (interpolate(x0, eps, t + h) - interpolate(x0, eps, t - h)) / (2 * h)
    assert torch.allclose(fd, velocity_target(x0, eps), atol=1e-3)


def test_per_token_t_on_packed_and_video_layouts():
    x0, eps = torch.randn(2, 6, 4), torch.randn(2, 6, 4)  # packed [R, S, D]
    t = torch.rand(2, 6)
    t[0, :2] = 0  # condition tokens: clean
    xt = interpolate(x0, eps, t)
    assert torch.equal(xt[0, :2], x0[0, :2])
    assert torch.allclose(xt, (1 - t[..., None]) * x0 + t[..., None] * eps)
    v0 = torch.randn(2, 3, 5, 4, 4)  # video [B, C, T, H, W] with t [B]
    assert expand_t(torch.rand(2), v0).shape == (2, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="prefix"):
        expand_t(torch.rand(3), v0)


def test_shift_formula_and_growth_with_tokens():
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(shift_time(t, 1.0), t)
    s = shift_time(t, 3.0)
    assert s[0] == 0 and s[-1] == 1 and bool((s[1:-1] > t[1:-1]).all())
    assert torch.allclose(unshift_time(s, 3.0), t, atol=1e-6)
    assert torch.allclose(shift_time(torch.tensor(0.5), 3.0), torch.tensor(0.75))  # 3*.5/(1+2*.5)
    cfg = FlowConfig(shift_base_tokens=256, shift_max=6.0)
    assert shift_for_tokens(256, cfg) == 1.0 and shift_for_tokens(64, cfg) == 1.0  # clamped at 1
    assert shift_for_tokens(1024, cfg) == pytest.approx(2.0)
    assert shift_for_tokens(10**7, cfg) == 6.0
    assert torch.allclose(shift_for_tokens(torch.tensor([256, 1024, 2304]), cfg), torch.tensor([1.0, 2.0, 3.0]))
    assert shift_for_tokens(10, FlowConfig(fixed_shift=3.0)) == 3.0


def test_timestep_sampling_logit_normal_and_shift():
    cfg = FlowConfig()
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(20000, cfg, generator=g)
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert float(t.median()) == pytest.approx(0.5, abs=0.02)
    logit = torch.log(t / (1 - t))
    assert float(logit.std()) == pytest.approx(1.0, abs=0.03)
    long = sample_timesteps(20000, cfg, num_tokens=4096, generator=torch.Generator().manual_seed(0))
    assert float(long.median()) == pytest.approx(0.8, abs=0.02)  # shift 4: 4*.5/(1+3*.5)
    mixed = sample_timesteps(2, cfg, num_tokens=torch.tensor([256, 4096]), generator=torch.Generator().manual_seed(1))
    base = sample_timesteps(2, cfg, generator=torch.Generator().manual_seed(1))
    assert mixed[0] == base[0] and mixed[1] > base[1]
    with pytest.raises(ValueError, match="num_tokens"):
        sample_timesteps(3, cfg, num_tokens=torch.tensor([1, 2]))



def test_noisy_share_moves_that_share_of_timesteps_to_the_noisy_end():
    base = sample_timesteps(20000, FlowConfig(), generator=torch.Generator().manual_seed(0))
    t = sample_timesteps(20000, FlowConfig(noisy_share=0.2, noisy_from=0.95), generator=torch.Generator().manual_seed(0))
    assert float((base >= 0.95).float().mean()) < 0.01
    moved = t != base
    assert float(moved.float().mean()) == pytest.approx(0.2, abs=0.01)        # that share ...
    assert float(t[moved].min()) >= 0.95 and float(t[moved].max()) <= 1.0      # ... at the noisy end,
    assert float(t[moved].std()) == pytest.approx(0.05 / 12 ** 0.5, rel=0.05)  # uniform over it
    for bad in ({"noisy_share": 1.5}, {"noisy_from": 1.0}):
        with pytest.raises(ValueError, match="noisy"):
            FlowConfig(**bad)

# ---------------------------------------------------------------- loss
def test_loss_mask_excludes_condition_and_dropped_tokens():
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    target[0, 0] = 100.0  # a condition token (t = 0) with a huge error ...
    target[1, 3] = -50.0  # ... and a dropped token
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 0] = mask[1, 3] = False
    loss, per = flow_loss(pred, target, mask)
    assert float(loss) == pytest.approx(1.0) and torch.allclose(per, torch.ones(2))
    unmasked, _ = flow_loss(pred, target)
    assert float(unmasked) > 100


def test_sample_vs_token_weighting_and_packed_sample_ids():
    pred = torch.zeros(1, 6, 2)
    target = torch.tensor([1.0, 1.0, 1.0, 1.0, 3.0, 0.0])[None, :, None].expand(1, 6, 2)
    ids = torch.tensor([[0, 0, 0, 0, 1, -1]])  # two samples packed in one row, then padding
    loss_s, per = flow_loss(pred, target, sample_ids=ids, weighting="sample")
    loss_t, _ = flow_loss(pred, target, sample_ids=ids, weighting="token")
    assert torch.allclose(per, torch.tensor([1.0, 9.0]))
    assert float(loss_s) == pytest.approx(5.0)  # (1 + 9) / 2
    assert float(loss_t) == pytest.approx((4 * 1 + 9) / 5)
    # a sample whose every token is a condition token reports NaN and does not enter the mean
    loss, per = flow_loss(pred, target, loss_mask=ids != 1, sample_ids=ids)
    assert math.isnan(per[1]) and float(loss) == pytest.approx(1.0)


def test_packed_loss_matches_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 10, 4, generator=g), torch.randn(3, 10, 4, generator=g)
    ids = torch.tensor([[0] * 4 + [1] * 6, [2] * 7 + [-1] * 3, [3] * 2 + [4] * 5 + [5] * 3])
    mask = torch.rand(3, 10, generator=g) > 0.3
    ref = []
    for i in range(6):
        sel = (ids == i) & mask
        ref.append(((pred[sel] - target[sel]) ** 2).mean() if bool(sel.any()) else torch.tensor(float("nan")))
    ref = torch.stack(ref)
    loss, per = flow_loss(pred, target, mask, sample_ids=ids)
    assert torch.allclose(per, ref, equal_nan=True)
    assert torch.allclose(loss, ref[~ref.isnan()].mean())
    loss8, per8 = flow_loss(pred, target, mask, sample_ids=ids, num_samples=8)  # ids 6, 7: no tokens
    assert torch.allclose(per8[:6], ref, equal_nan=True) and per8[6:].isnan().all() and torch.allclose(loss8, loss)
    with pytest.raises(ValueError, match="num_samples"):
        flow_loss(pred, target, sample_ids=ids, num_samples=5)
    sel = mask & (ids >= 0)
    token, _ = flow_loss(pred, target, mask, weighting="token", sample_ids=ids)
    assert torch.allclose(token, ((pred[sel] - target[sel]) ** 2).mean())


def test_flow_matching_loss_is_the_objective_spelled_out():
    # noise from the generator, x_t on the straight path, the model's velocity against noise - x0;
    # with `shard`, the model and the loss see only the part of each row that shard keeps.
    g = torch.Generator().manual_seed(0)
    x0, t = torch.randn(2, 6, 4, generator=g), torch.rand(2, 6, generator=g)
    ids = torch.tensor([[0, 0, 0, 1, 1, -1], [2, 2, 2, 2, 2, 2]])
    mask = torch.rand(2, 6, generator=g) > 0.3

    def model_fn(x, t, cond):
        return cond * x + t[..., None]

    def shard(x):
        return x[:, 2:5]

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x_t, target = interpolate(x0, noise, t), velocity_target(x0, noise)
    for part in (None, shard):
        cut = part or (lambda x: x)
        ref = flow_loss(model_fn(cut(x_t), cut(t), 0.5), cut(target), cut(mask), sample_ids=cut(ids), num_samples=3)
        got = flow_matching_loss(model_fn, x0, t, 0.5, generator=torch.Generator().manual_seed(1),
                                 loss_mask=cut(mask), sample_ids=cut(ids), num_samples=3, shard=part)
        assert torch.equal(got[0], ref[0]) and torch.allclose(got[1], ref[1], equal_nan=True)


def test_loss_has_gradient_and_video_mask():
    pred = torch.zeros(2, 3, 4, 2, 2, requires_grad=True)  # [B, C, T, H, W]
    frame_mask = torch.ones(2, 1, 4, 1, 1)
    frame_mask[:, :, 0] = 0  # first frame given (i2v): not in the loss
    target = torch.ones(2, 3, 4, 2, 2)
    target[:, :, 0] = 7
    loss, _ = flow_loss(pred, target, frame_mask)
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    assert bool((pred.grad[:, :, 0] == 0).all()) and bool((pred.grad[:, :, 1:] != 0).all())


def test_frame_noise_share_correlates_frames_of_one_position_only():
    # Two clips: 4 latent frames of 3x2 tokens and 2 frames of 1x2.
    latents = [torch.zeros(4, 4, 6, 4), torch.zeros(4, 2, 2, 4)]
    packed = pack(latents, (1, 2, 2))
    gen = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(4000):
        noise = torch.randn(packed.tokens.shape, generator=gen)
        shapes = []

        def draw(shape):
            shapes.append(shape)
            return torch.randn(shape, generator=gen)

        draws.append(share_noise_over_frames(noise, packed.coords, packed.sample_ids, 0.6, draw).flatten(0, 1))
        assert shapes == [(2, 3, 2, 16)]  # one shared draw: samples x grid height x grid width x token dim
    x = torch.stack(draws)  # (n, R * S, D)
    assert abs(x.var().item() - 1) < 0.02  # still unit variance per element
    c, ids = packed.coords.flatten(0, 1), packed.sample_ids.flatten()

    def corr(i, j):
        return torch.corrcoef(torch.stack([x[:, i].flatten(), x[:, j].flatten()]))[0, 1].item()

    token = {(int(ids[i]), *map(int, c[i])): i for i in range(len(ids)) if ids[i] >= 0}
    assert abs(corr(token[0, 0, 1, 1], token[0, 3, 1, 1]) - 0.6) < 0.03  # same place, other frame
    assert abs(corr(token[0, 0, 1, 1], token[0, 0, 2, 1])) < 0.03     # another place
    assert abs(corr(token[0, 2, 0, 0], token[1, 1, 0, 0])) < 0.03     # another clip
    assert abs(corr(token[1, 0, 0, 1], token[1, 1, 0, 1]) - 0.6) < 0.03
    noise = torch.randn(packed.tokens.shape)
    assert share_noise_over_frames(noise, packed.coords, packed.sample_ids, 0.0, None) is noise
    with pytest.raises(ValueError, match=r"frame_noise_share must be in \[0, 1\), got 1.0"):
        FlowConfig(frame_noise_share=1.0)


def test_loss_by_t_bin():
    t = torch.tensor([0.05, 0.07, 0.55, 0.99, 1.0])
    mean, count = loss_by_t_bin(t, torch.tensor([1.0, 3.0, 5.0, 7.0, float("nan")]), bins=10)
    assert mean[0] == 2.0 and mean[5] == 5.0 and mean[9] == 7.0
    assert count.tolist() == [2, 0, 0, 0, 0, 1, 0, 0, 0, 1] and math.isnan(mean[1])


# ---------------------------------------------------------------- samplers
def test_schedule_endpoints_and_sdedit_start():
    ts = timesteps(10, shift=3.0)
    assert ts[0] == 1 and ts[-1] == 0 and len(ts) == 11 and bool((ts[1:] < ts[:-1]).all())
    part = timesteps(4, shift=3.0, t_start=0.6)
    assert float(part[0]) == pytest.approx(0.6) and part[-1] == 0


def test_euler_with_exact_linear_velocity_recovers_x0():
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    const = sample(lambda x, t, c: eps - x0, eps, steps=3, progress=False)
    assert torch.allclose(const, x0, atol=1e-5)

    def field(x, t, c):  # the same path's velocity read off x: (x_t - x0) / t
        return (x - x0) / expand_t(t, x)
    out = sample(field, eps, steps=7, shift=2.5, progress=False)
    assert torch.allclose(out, x0, atol=1e-5)


def _gaussian_velocity(mu: float, sigma: float):
    """Exact v(x, t) = E[eps - x0 | x_t = x] for x0 ~ N(mu, sigma^2), eps ~ N(0, 1)."""
    def v(x, t, c):
        t = expand_t(t, x).double()
        a = 1 - t
        var = a**2 * sigma**2 + t**2
        r = x.double() - a * mu
        return (t / var * r - (mu + a * sigma**2 / var * r)).to(x.dtype)
    return v  # the exact flow maps noise z to mu + sigma z


def test_heun_beats_euler_at_equal_evaluations_on_gaussian_flow():
    mu, sigma = 0.5, 0.5
    z = make_noise((4096,), seed=0, dtype=torch.float64)
    exact = mu + sigma * z
    calls = {"n": 0}
    v = _gaussian_velocity(mu, sigma)

    def counted(x, t, c):
        calls["n"] += 1
        return v(x, t, c)
    euler = sample(counted, z, steps=19, method="euler", progress=False)
    assert calls["n"] == 19
    calls["n"] = 0
    heun = sample(counted, z, steps=10, method="heun", progress=False)
    assert calls["n"] == 19  # 2 * 10 - 1: no correction on the last step to t = 0
    err_euler, err_heun = (euler - exact).abs().max(), (heun - exact).abs().max()
    assert err_heun < 0.5 * err_euler, (err_heun, err_euler)
    fine = sample(v, z, steps=200, method="heun", progress=False)
    assert (fine - exact).abs().max() < 1e-4


def test_guidance_scale_one_equals_conditional_and_cfg_formula():
    def model(x, t, c):
        tokens, mask = c
        return x * 0 + (tokens * mask[..., None]).sum(dim=(1, 2))[:, None]
    cond = (torch.ones(2, 5, 3), torch.ones(2, 5, dtype=torch.bool))
    uncond = (torch.zeros(2, 2, 3), torch.ones(2, 2, dtype=torch.bool))  # shorter: padded on batching
    noise = torch.randn(2, 4)
    only_cond = sample(model, noise, steps=4, cond=cond, progress=False)
    assert torch.equal(sample(model, noise, steps=4, cond=cond, uncond=uncond, guidance_scale=1.0,
                              progress=False), only_cond)
    x, t = torch.randn(2, 4), torch.full((2,), 0.5)
    batched = guided_velocity(model, x, t, cond, uncond, 3.0, batched=True)
    separate = guided_velocity(model, x, t, cond, uncond, 3.0, batched=False)
    assert torch.allclose(batched, separate) and torch.allclose(batched, torch.full((2, 4), 45.0))
    with pytest.raises(ValueError, match="uncond"):
        sample(model, noise, steps=2, cond=cond, guidance_scale=2.0, progress=False)


def test_guidance_interval_guides_only_the_steps_inside_it():
    seen = []  # (the step's t, guided: the batch doubled for cond + uncond)

    def model(x, t, c):
        seen.append((round(float(t[0]), 4), x.shape[0] == 2 * noise.shape[0]))
        return x * 0 + c[:, None]
    cond, uncond, noise = torch.ones(2), torch.zeros(2), torch.randn(2, 4)
    out = sample(model, noise, steps=4, cond=cond, uncond=uncond, guidance_scale=3.0,  # t: 1, .75, .5, .25
                 guidance_interval=(0.5, 1.0), progress=False)
    assert seen == [(1.0, True), (0.75, True), (0.5, True), (0.25, False)]
    # guided steps move x by dt * 3 (v_u + 3 (v_c - v_u) = 3), the unguided last step by dt * 1
    assert torch.allclose(out, noise - 0.25 * (3 + 3 + 3 + 1))
    whole = sample(model, noise, steps=4, cond=cond, uncond=uncond, guidance_scale=3.0, progress=False)
    assert torch.allclose(whole, noise - 3.0)
    seen.clear()
    none = sample(model, noise, steps=4, cond=cond, uncond=uncond, guidance_scale=3.0,
                  guidance_interval=(0.0, 0.0), progress=False)  # no step starts at t = 0: never guided
    assert not any(g for _, g in seen) and torch.allclose(none, noise - 1.0)
    for bad in [(0.6, 0.4), (-0.1, 1.0), (0.0, 1.5), (0.5,), "ab"]:
        with pytest.raises(ValueError, match="guidance_interval"):
            sample(model, noise, steps=2, cond=cond, uncond=uncond, guidance_scale=2.0,
                   guidance_interval=bad, progress=False)


def test_seeds_give_identical_outputs_and_callback_progress():
    def model(x, t, c):
        return torch.sin(3 * x) + expand_t(t, x)
    a = sample(model, make_noise((2, 3, 4), seed=7), steps=5, method="heun", progress=False)
    seen = []
    b = sample(model, make_noise((2, 3, 4), seed=7), steps=5, method="heun", progress=True,
               callback=lambda i, t, x: seen.append((i, t)))
    c = sample(model, make_noise((2, 3, 4), seed=8), steps=5, method="heun", progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [i for i, _ in seen] == list(range(5)) and seen[-1][1] == 0.0


def test_condition_tokens_reimposed_with_t_zero_and_sdedit():
    x_cond = torch.randn(2, 6, 4)
    cond_mask = torch.zeros(2, 6, dtype=torch.bool)
    cond_mask[:, :2] = True  # first two tokens of each row are given frames
    seen_t = []

    def model(x, t, c):
        seen_t.append(t.clone())
        assert torch.equal(x[:, :2], x_cond[:, :2])  # clean when the model sees them
        return torch.ones_like(x)
    out = sample(model, torch.randn(2, 6, 4), steps=3, method="heun", x_cond=x_cond, cond_mask=cond_mask,
                 progress=False)
    assert torch.equal(out[:, :2], x_cond[:, :2])
    assert all(t.shape == (2, 6) and bool((t[:, :2] == 0).all()) and bool((t[:, 2:] > 0).all()) for t in seen_t)
    # SDEdit: strength 0.3 from a video stays close to it; with the exact field it returns it exactly
    x_init, noise = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    out = sample(lambda x, t, c: (x - x_init) / expand_t(t, x), noise, steps=3, x_init=x_init, t_start=0.3,
                 progress=False)
    assert torch.allclose(out, x_init, atol=1e-5)


def test_sampler_rejects_bad_input():
    noise = torch.randn(2, 3)
    with pytest.raises(ValueError, match="method"):
        sample(lambda x, t, c: x, noise, method="rk4", progress=False)
    with pytest.raises(ValueError, match="steps"):
        sample(lambda x, t, c: x, noise, steps=0, progress=False)
    with pytest.raises(ValueError, match="strength"):
        sample(lambda x, t, c: x, noise, x_init=noise, t_start=1.5, progress=False)
    with pytest.raises(ValueError, match="together"):
        sample(lambda x, t, c: x, noise, x_cond=noise, progress=False)
