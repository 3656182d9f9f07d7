"""`patchflow info`: versions, device, threads and where the default weights are."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    import platform

    import numpy
    import torch

    import patchflow
    from patchflow.paths import default_model_dir, default_vae_dir

    lines = {
        "patchflow": patchflow.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
    for name in ("av", "transformers", "einops", "safetensors"):
        try:
            lines[name] = __import__(name).__version__
        except ImportError:
            lines[name] = "not installed"
    if torch.cuda.is_available():
        lines["device"] = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU)"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        lines["device"] = "mps"
    else:
        lines["device"] = "cpu"
    lines["threads"] = str(torch.get_num_threads())
    model, vae = default_model_dir(), default_vae_dir()
    lines["default model"] = f"{model} ({'present' if model.is_dir() else 'not found'})"
    lines["default VAE"] = f"{vae} ({'present' if (vae / 'model.safetensors').is_file() else 'not found'})"
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
    return 0


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("info", help="versions, device, threads and where the default weights are")
    p.set_defaults(func=run)

