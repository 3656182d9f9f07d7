"""Saving and loading model folders: `config.json` + `model.safetensors`.

Every component (VAE, DiT, text encoder) is saved the same way, so a pipeline
folder is just one sub-folder per component. Nothing is pickled: configs are
JSON, tensors are safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

C = TypeVar("C")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def config_to_dict(config: Any) -> dict:
    """A dataclass config as a JSON-ready dict (tuples become lists)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass config, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type[C], data: dict) -> C:
    """Build dataclass `cls` from a dict, rejecting unknown keys by name. Keys a class has renamed
    (its `RENAMED`, old name -> new) are read under their new names, so saved folders keep loading."""
    renamed = getattr(cls, "RENAMED", {})
    data = {renamed.get(k, k): v for k, v in data.items()}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            # JSON has no tuples; restore them where the default is one.
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
    return cls(**kwargs)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_component(directory: str | os.PathLike, config: Any, state_dict: dict[str, torch.Tensor],
                   dtype: torch.dtype | None = None) -> Path:
    """Save a component folder: `config.json` and `model.safetensors` (optionally cast)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor
    # safetensors writes the file itself; write beside it and rename for atomicity.
    tmp = directory / f".{WEIGHTS_NAME}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, directory / WEIGHTS_NAME)
    text = json.dumps(config_to_dict(config), indent=2) + "\n"
    atomic_write_bytes(directory / CONFIG_NAME, text.encode())
    return directory


def load_component(directory: str | os.PathLike, config_cls: type[C]) -> tuple[C, dict[str, torch.Tensor]]:
    """Load `(config, state_dict)` from a component folder, with clear errors for missing files."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"missing {path.name} in model folder {directory}")
    config = config_from_dict(config_cls, json.loads(config_path.read_text()))
    state = load_file(str(weights_path))
    return config, state
