"""The pipeline folder: what `VideoPipeline.save_pretrained` writes and `from_pretrained` reads.

    DIR/model_index.json  {"transformer": "transformer", "vae": "vae", "text_encoder": "minilm" | "tiny" |
                           "text_encoder", "flow": {FlowConfig}, "defaults": {num_frames, height, width,
                           num_inference_steps, guidance_scale, guidance_interval, sampler, shift, fps},
                           "world": "shapes" | null}
    DIR/transformer/, DIR/vae/ (config.json + model.safetensors), DIR/text_encoder/ (a saved encoder, if any)
    optional: "noisy_expert": {"transformer": "noisy_expert", "boundary": b} and DIR/noisy_expert/: a second
                           DiT that takes every sampler step at t >= b (the layout), the transformer the rest

A training run keeps its pipeline in RUN/final/, so a run folder loads like a pipeline folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from patchflow.flow import FlowConfig
from patchflow.models.dit import DiT
from patchflow.models.text import TEXT_ENCODERS, TextEncoder, TinyTextEncoder, load_text_encoder
from patchflow.models.vae import VideoVAE
from patchflow.paths import default_model_dir
from patchflow.shapes import get_world
from patchflow.weights import atomic_write_bytes, config_from_dict

MODEL_INDEX = "model_index.json"


def pipeline_folder(path: str | os.PathLike) -> Path:
    """The folder holding model_index.json: `path` itself, or its final/ (a training run)."""
    root = Path(path).expanduser()
    folder = next((f for f in (root, root / "final") if (f / MODEL_INDEX).is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"{root} is not a pipeline folder: no {MODEL_INDEX} in it or in {root / 'final'}")
    return folder


def read_folder(path: str | os.PathLike | None) -> dict[str, Any]:
    """The parts of a pipeline folder, a training run or (None) the shipped model, as VideoPipeline's
    arguments: transformer, vae, text_encoder, flow_config, defaults, text_encoder_spec, world, and
    noisy_expert / noisy_boundary when the index names an expert."""
    if path is None:
        root = default_model_dir()
        if not (root / MODEL_INDEX).is_file():
            raise FileNotFoundError(f"the shipped model is missing: no {MODEL_INDEX} in {root}; pass a model "
                                    "folder with --model DIR (VideoPipeline.from_pretrained(DIR)) or set "
                                    "PATCHFLOW_MODEL, e.g. a run folder written by `patchflow train`")
    folder = pipeline_folder(default_model_dir() if path is None else path)
    index = json.loads((folder / MODEL_INDEX).read_text())
    missing = sorted({"transformer", "vae", "text_encoder"} - set(index))
    if missing:
        raise ValueError(f"{folder / MODEL_INDEX} lacks {missing}")
    spec = index["text_encoder"]
    parts = {
        "transformer": DiT.from_pretrained(folder / index["transformer"]).eval(),
        "vae": VideoVAE.from_pretrained(folder / index["vae"]).eval(),
        "text_encoder": load_text_encoder(spec if spec in TEXT_ENCODERS or not (folder / spec).exists()
                                          else str(folder / spec)).eval(),
        "flow_config": config_from_dict(FlowConfig, index.get("flow", {})),
        "defaults": index.get("defaults"),
        "text_encoder_spec": spec,
        "world": _saved_world(folder, index),
    }
    if "noisy_expert" in index:
        entry = index["noisy_expert"]
        parts["noisy_expert"] = DiT.from_pretrained(folder / entry["transformer"]).eval()
        parts["noisy_boundary"] = entry["boundary"]
    return parts


def write_folder(pipe, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write `pipe` (a VideoPipeline) in the folder format above; `dtype` casts the saved weights."""
    directory = Path(directory)
    pipe.transformer.save_pretrained(directory / "transformer", dtype=dtype)
    pipe.vae.save_pretrained(directory / "vae", dtype=dtype)
    spec = text_encoder_entry(pipe.text_encoder, pipe.text_encoder_spec)
    if spec == "text_encoder":  # weights the name alone does not rebuild: store them
        target = directory / "text_encoder"
        if hasattr(pipe.text_encoder, "save_pretrained"):
            pipe.text_encoder.save_pretrained(target)
        elif Path(getattr(pipe.text_encoder, "path", "")).resolve() != target.resolve():
            shutil.copytree(pipe.text_encoder.path, target, dirs_exist_ok=True)
    index = {"transformer": "transformer", "vae": "vae", "text_encoder": spec,
             "flow": dataclasses.asdict(pipe.flow_config), "defaults": pipe.defaults, "world": pipe.world}
    if pipe.noisy_expert is not None:
        pipe.noisy_expert.save_pretrained(directory / "noisy_expert", dtype=dtype)
        index["noisy_expert"] = {"transformer": "noisy_expert", "boundary": pipe.noisy_boundary}
    atomic_write_bytes(directory / MODEL_INDEX, (json.dumps(index, indent=2) + "\n").encode())
    return directory


def text_encoder_entry(encoder: TextEncoder, spec: str) -> str:
    """"minilm" / "minilm+words" / "tiny" when the name rebuilds this encoder exactly, else "text_encoder"
    (saved beside)."""
    if isinstance(encoder, TinyTextEncoder):
        fresh = TinyTextEncoder(encoder.config)  # a trained tiny encoder differs from its seed's weights
        same = all(torch.equal(a.cpu().float(), b) for a, b in zip(encoder.state_dict().values(),
                                                                  fresh.state_dict().values()))
        return "tiny" if same and spec == "tiny" else "text_encoder"
    name = getattr(encoder, "spec", None)
    return name if name in TEXT_ENCODERS else "text_encoder"  # "tiny" was answered above


def _saved_world(folder: Path, index: dict) -> str | None:
    """A saved model's world: the index's "world" (the training loop writes what its captions came from),
    "shapes" (the built-in world) for folders saved before the index named it."""
    world = index.get("world", "shapes")
    try:
        get_world(world)
    except ValueError as e:
        raise ValueError(f"{folder / MODEL_INDEX}: {e}") from None
    return world
