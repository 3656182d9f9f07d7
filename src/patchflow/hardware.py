"""Peak throughput of the device, the denominator of MFU (model FLOPs utilisation)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' data sheets.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12,
                 "A10": 125e12, "4090": 165e12, "3090": 71e12}


@functools.lru_cache(maxsize=None)
def peak_flops(device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s the device can reach: the data-sheet peak for known GPUs, else measured.

    The measurement (`measure_peak_flops`) is the best of a few large square
    matmuls, what a transformer's time is mostly spent on, so CPU MFU reads as
    "share of achievable matmul speed".
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                return value if dtype in (torch.bfloat16, torch.float16) else value / 2
    return measure_peak_flops(dev, dtype, n=1024 if dev.type == "cpu" else 8192, repeats=3)


def measure_peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       n: int = 2048, repeats: int = 5, clock: Callable[[], float] = time.perf_counter) -> float:
    """Achievable matmul FLOP/s: the best of `repeats` n x n x n matmuls (2 n^3 FLOPs each).

    A measured peak, not the datasheet one: MFU against it says how close the model's step
    comes to what this machine's BLAS reaches on one large, square matmul in this dtype.
    """
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(repeats + 1):  # first call warms up the BLAS
        synchronize(device)
        start = clock()
        a @ b
        synchronize(device)
        best = min(best, clock() - start)
    return 2 * n ** 3 / best


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere. Timers call it on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
