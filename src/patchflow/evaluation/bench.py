"""`patchflow bench dit`: DiT training-step throughput, measured side by side in one run.

(a) our train step (forward + backward) against diffusers' WanTransformer3DModel at the same
    width, depth, heads, FFN size, patch, text length and token count (one clip);
(b) packed (NaViT first-fit-decreasing rows of `tokens`) against padded (one sample per row)
    training on a mixed batch of videos and images, counting useful (non-padding) tokens/s.

Steps of the compared variants are interleaved (A, B, A, B, ...) so that load from other
processes on a shared machine hits both alike; each throughput uses the fastest of `steps`
timed steps (the least disturbed one) and the median is reported beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import time
from collections.abc import Callable

import torch

from patchflow.models.dit import DiT, dit_config
from patchflow.hardware import measure_peak_flops, synchronize
from patchflow.models.patches import pack, pad_batch

# The mixed batch of (b): (frames, height, width) in pixels; images are 1-frame videos.
MIXED_CLIPS = ((17, 64, 64), (9, 48, 96), (33, 96, 48), (1, 64, 64))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _grid_for(tokens: int) -> tuple[int, int, int]:
    """A patch grid (t, h, w) with t*h*w == tokens: the most frames <= 16 with a square frame."""
    for t in range(min(16, tokens), 0, -1):
        if tokens % t == 0 and math.isqrt(tokens // t) ** 2 == tokens // t:
            side = math.isqrt(tokens // t)
            return t, side, side
    h = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
    return 1, h, tokens // h


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _interleaved(fns: dict[str, Callable[[], None]], steps: int, warmup: int, device,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            synchronize(device)
            start = clock()
            fn()
            synchronize(device)
            if i >= warmup:
                times[name].append(clock() - start)
    return times


def _train_step(model: torch.nn.Module, forward: Callable[[], torch.Tensor], autocast) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast():
            out = forward()
        out.float().square().mean().backward()  # an MSE-shaped loss: same backward work as training
    return step


def _wan_like(config, device: torch.device):
    """diffusers' Wan transformer with our width, depth, heads, FFN size, patch and text width."""
    from diffusers import WanTransformer3DModel

    head_dim = config.hidden_size // config.num_heads
    wan = WanTransformer3DModel(
        patch_size=tuple(config.patch_size), num_attention_heads=config.num_heads, attention_head_dim=head_dim,
        in_channels=config.in_channels, out_channels=config.in_channels, text_dim=config.text_dim,
        freq_dim=config.frequency_embedding_size, ffn_dim=int(config.hidden_size * config.mlp_ratio),
        num_layers=config.depth, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    )
    # diffusers builds the RoPE tables in float64 and keeps "rope" in fp32 when loading with a
    # torch_dtype; use fp32 tables here, the faster of the two, so Wan is not slowed by float64 math.
    wan.rope.freqs_cos, wan.rope.freqs_sin = wan.rope.freqs_cos.float(), wan.rope.freqs_sin.float()
    return wan.to(device)


def mixed_latents(channels: int, vae_scale: tuple[int, int], min_tokens: int, patch, seed: int = 0):
    """Latents [C, T', H', W'] of MIXED_CLIPS, cycled until they hold >= min_tokens patch tokens."""
    ft, fs = vae_scale
    gen = torch.Generator().manual_seed(seed)
    shapes = [(channels, 1 + (f - 1) // ft, h // fs, w // fs) for f, h, w in MIXED_CLIPS]
    per_cycle = sum(math.prod(s[1:]) // math.prod(patch) for s in shapes)
    cycles = max(1, math.ceil(min_tokens / per_cycle))
    return [torch.randn(s, generator=gen) for _ in range(cycles) for s in shapes]


def bench_dit(preset: str = "S/2", tokens: int = 2048, device: str = "cpu", dtype: str = "float32",
              steps: int = 3, warmup: int = 1, text_len: int = 64, channels: int = 16,
              vae_scale: tuple[int, int] = (4, 4), compile: bool = False, backend: str = "auto",
              compare_diffusers: bool = True, compare_padding: bool = True, timer: str = "wall",
              threads: int | None = None, diffusers_text_len: int | None = None, seed: int = 0) -> dict:
    """Measure DiT train-step throughput; returns a dict of numbers (tokens/s, speedups, MFU).

    preset: a DIT_PRESETS name; tokens: the clip length of (a) and the row budget of (b);
    dtype: compute dtype (autocast for bfloat16/float16, weights stay fp32);
    vae_scale: (ft, fs) of the VAE that made the mixed batch of (b); channels: latent C.
    timer: "wall" (perf_counter) or "cpu" (process CPU time: with threads=1 on a CPU shared with
        other jobs it counts only this process's own work, so results do not swing with their load).
    threads: torch intra-op threads for the run (None: leave as is).
    diffusers_text_len: text tokens given to Wan (None: text_len). Wan's cross-attention has no
        text mask, so its pipeline pads prompts to 512 tokens; ours attends to real tokens only.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if timer not in CLOCKS:
        raise ValueError(f"timer must be one of {sorted(CLOCKS)}, got {timer!r}")
    if tokens < 1 or steps < 1 or warmup < 0:
        raise ValueError(f"tokens and steps must be >= 1 and warmup >= 0, got {tokens}, {steps}, {warmup}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if compare_diffusers and importlib.util.find_spec("diffusers") is None:
        raise ImportError("the comparison with diffusers' Wan needs diffusers: pip install 'patchflow[bench]' "
                          "(or run without it: compare_diffusers=False / --no-diffusers)")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(preset, tokens, device, dtype, steps, warmup, text_len, channels, vae_scale, compile,
                      backend, compare_diffusers, compare_padding, timer, diffusers_text_len or text_len, seed)
    finally:
        torch.set_num_threads(previous_threads)


def _bench(preset, tokens, device, dtype, steps, warmup, text_len, channels, vae_scale, compile, backend,
           compare_diffusers, compare_padding, timer, wan_text_len, seed) -> dict:
    clock = CLOCKS[timer]
    dev = torch.device(device)
    torch.manual_seed(seed)
    config = dit_config(preset, in_channels=channels, attention_backend=backend)
    if compare_padding:  # check the budget before any work
        latents = mixed_latents(channels, vae_scale, 2 * tokens, config.patch_size, seed)
        longest = max(math.prod(x.shape[1:]) // math.prod(config.patch_size) for x in latents)
        if longest > tokens:
            raise ValueError(f"tokens {tokens} is below the longest mixed-batch sample ({longest} tokens): "
                             f"use --tokens >= {longest}")
    model = DiT(config).to(dev).train()
    if compile:
        model.compile_blocks()
    cdtype = DTYPES[dtype]

    def autocast():
        return torch.autocast(dev.type, dtype=cdtype, enabled=cdtype != torch.float32)

    pt, ph, pw = config.patch_size
    result: dict = {"preset": preset, "tokens": tokens, "device": str(dev), "dtype": dtype,
                    "text_len": text_len, "steps": steps, "compile": compile, "backend": backend, "timer": timer,
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "ours_params": model.num_parameters()}
    peak = measure_peak_flops(dev, cdtype, clock=clock)
    result["peak_flops"] = peak

    # (a) one clip of `tokens` tokens: ours against diffusers' Wan.
    grid = _grid_for(tokens)
    latent = torch.randn(channels, grid[0] * pt, grid[1] * ph, grid[2] * pw, device=dev)
    one = pack([latent], config.patch_size)
    one.timesteps.fill_(0.5)
    text = torch.randn(1, text_len, config.text_dim, device=dev)
    fns = {"ours": _train_step(model, lambda: model.forward_packed(one, text), autocast)}
    if compare_diffusers:
        wan = _wan_like(config, dev).train()
        result["diffusers_wan_params"] = sum(p.numel() for p in wan.parameters())
        t_wan = torch.full((1,), 500.0, device=dev)  # Wan takes t in [0, 1000]
        wan_text = torch.randn(1, wan_text_len, config.text_dim, device=dev)
        result["diffusers_text_len"] = wan_text_len
        fns["diffusers_wan"] = _train_step(wan, lambda: wan(latent[None], t_wan, wan_text, return_dict=False)[0],
                                           autocast)
    times = _interleaved(fns, steps, warmup, dev, clock)
    for name, ts in times.items():
        result[f"{name}_step_s"] = min(ts)
        result[f"{name}_step_s_median"] = statistics.median(ts)
        result[f"{name}_tokens_per_s"] = tokens / min(ts)
    result["grid"] = list(grid)
    result["mfu"] = model.estimate_mfu(grid, text_len, min(times["ours"]), peak)
    if compare_diffusers:
        result["speedup_vs_diffusers"] = result["ours_tokens_per_s"] / result["diffusers_wan_tokens_per_s"]
        result["speedup_vs_diffusers_median"] = (result["diffusers_wan_step_s_median"]
                                                 / result["ours_step_s_median"])
        del wan

    # (b) packed vs padded on a mixed batch of videos and images.
    if compare_padding:
        latents = [x.to(dev) for x in latents]
        gen = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        packed = pack(latents, config.patch_size, budget=tokens)
        result["pack_ms"] = 1e3 * (time.perf_counter() - start)
        padded = pad_batch(latents, config.patch_size)
        t_sample = torch.rand(len(latents), generator=gen).to(dev)
        batch_text = torch.randn(len(latents), text_len, config.text_dim, generator=gen).to(dev)
        for batch in (packed, padded):
            batch.timesteps = batch.per_token(t_sample)
        useful = packed.num_tokens
        times = _interleaved({
            "packed": _train_step(model, lambda: model.forward_packed(packed, batch_text), autocast),
            "padded": _train_step(model, lambda: model.forward_packed(padded, batch_text), autocast),
        }, steps, warmup, dev, clock)
        for name, batch in (("packed", packed), ("padded", padded)):
            ts = times[name]
            result[f"{name}_rows"] = list(batch.tokens.shape[:2])
            result[f"{name}_padding_fraction"] = batch.padding_fraction
            result[f"{name}_step_s"] = min(ts)
            result[f"{name}_step_s_median"] = statistics.median(ts)
            result[f"{name}_tokens_per_s"] = useful / min(ts)
        result["mixed_samples"] = len(latents)
        result["useful_tokens"] = useful
        result["packed_speedup"] = result["packed_tokens_per_s"] / result["padded_tokens_per_s"]
        result["packed_speedup_median"] = result["padded_step_s_median"] / result["packed_step_s_median"]
    return result


def format_result(result: dict) -> str:
    """A short human-readable table of a bench_dit result."""
    lines = [(f"DiT {result['preset']}  {result['tokens']} tokens  {result['device']} {result['dtype']}  "
             f"torch {result['torch']} ({result['threads']} threads, {result['timer']} time)  compile={result['compile']}")]
    for name in ("ours", "diffusers_wan", "packed", "padded"):
        if f"{name}_tokens_per_s" in result:
            lines.append(f"  {name:14s} {result[f'{name}_tokens_per_s']:10.0f} tokens/s   step "
                         f"{result[f'{name}_step_s']:.3f} s (median {result[f'{name}_step_s_median']:.3f} s)")
    if "speedup_vs_diffusers" in result:
        lines.append(f"  ours / diffusers Wan: {result['speedup_vs_diffusers']:.2f}x "
                     f"(median {result['speedup_vs_diffusers_median']:.2f}x)")
    if "packed_speedup" in result:
        lines.append(f"  packed / padded: {result['packed_speedup']:.2f}x (median {result['packed_speedup_median']:.2f}x); "
                     f"padding {result['packed_padding_fraction']:.1%} vs {result['padded_padding_fraction']:.1%}")
    lines.append(f"  MFU {result['mfu']:.1%} of a measured peak of {result['peak_flops'] / 1e9:.0f} GFLOP/s")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `patchflow bench dit` (one per bench_dit argument)."""
    from patchflow.models.dit import DIT_PRESETS

    parser.add_argument("--preset", default="S/2", choices=sorted(DIT_PRESETS), help="DiT preset")
    parser.add_argument("--tokens", type=int, default=2048, help="clip length of (a), row budget of (b)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--diffusers-text-len", type=int, default=None, help="Wan's text length (default --text-len)")
    parser.add_argument("--channels", type=int, default=16, help="latent channels")
    parser.add_argument("--vae-scale", type=int, nargs=2, default=(4, 4), metavar=("FT", "FS"),
                        help="VAE compression of the mixed batch in (b)")
    parser.add_argument("--backend", default="auto", help="attention backend: auto|dense|sdpa|flex|varlen|naive")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    parser.add_argument("--timer", default="wall", choices=sorted(CLOCKS),
                        help="wall clock, or process CPU time (steady on a shared CPU with --threads 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-diffusers", action="store_true", help="skip (a)'s diffusers Wan comparison")
    parser.add_argument("--no-padding", action="store_true", help="skip (b), packed vs padded")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")


def run_from_args(args: argparse.Namespace) -> dict:
    """Run bench_dit with parsed `add_arguments` flags; prints the table (and JSON last with --json)."""
    result = bench_dit(args.preset, args.tokens, args.device, args.dtype, steps=args.steps, warmup=args.warmup,
                       text_len=args.text_len, channels=args.channels, vae_scale=tuple(args.vae_scale),
                       compile=args.compile, backend=args.backend, compare_diffusers=not args.no_diffusers,
                       compare_padding=not args.no_padding, timer=args.timer, threads=args.threads,
                       diffusers_text_len=args.diffusers_text_len)
    print(format_result(result))
    if args.json:
        print(json.dumps(result))
    return result
