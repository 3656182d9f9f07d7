"""Peak throughput of the device, the denominator of MFU (model FLOPs utilisation)."""

from __future__ import annotations

import functools
import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' data sheets.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12,
                 "A10": 125e12, "4090": 165e12, "3090": 71e12}


@functools.lru_cache(maxsize=None)
def peak_flops(device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s the device can reach: the data-sheet peak for known GPUs, else measured.

    The measurement (bench.measure_peak_flops) is the best of a few large square
    matmuls, what a transformer's time is mostly spent on, so CPU MFU reads as
    "share of achievable matmul speed".
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                return value if dtype in (torch.bfloat16, torch.float16) else value / 2
    from patchflow.bench import measure_peak_flops

    return measure_peak_flops(dev, dtype, n=1024 if dev.type == "cpu" else 8192, repeats=3)
