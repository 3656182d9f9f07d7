"""Where patchflow finds things: the shipped model folder and the user's cache."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def default_model_dir() -> Path:
    """The shipped model: `$PATCHFLOW_MODEL` if set, else `patchflow/pretrained/shapes-world`."""
    env = os.environ.get("PATCHFLOW_MODEL")
    return Path(env) if env else PACKAGE_DIR / "pretrained" / "shapes-world"


def default_vae_dir() -> Path:
    """The shipped general video VAE: `$PATCHFLOW_VAE` if set, else `patchflow/pretrained/vae-general`."""
    env = os.environ.get("PATCHFLOW_VAE")
    return Path(env) if env else PACKAGE_DIR / "pretrained" / "vae-general"


def data_home() -> Path:
    """Where fetched training footage lives: `$PATCHFLOW_DATA` if set, else `~/.cache/patchflow`."""
    env = os.environ.get("PATCHFLOW_DATA")
    return Path(env) if env else Path.home() / ".cache" / "patchflow"
