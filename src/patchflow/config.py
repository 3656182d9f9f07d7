"""Training configuration: typed dataclasses, short TOML diffs, `--set` overrides.

A run's config is the defaults below, then a TOML file's tables, then
`--set section.key=value` flags, each checked against the field names:

    [dit]   preset = "tiny"             # any DiTConfig field may follow
    [vae]   preset = "tiny"             # or path = "runs/vae/final/vae"; any VAEConfig field
    [text]  encoder = "tiny"            # "minilm" (default), "tiny", or a model folder
    [flow]  ...                         # FlowConfig (flow.py)
    [vae_loss] ...                      # VAELossConfig (vae_loss.py), the VAE stage
    [data]  [tasks]  [train]            # below

Model components keep their own config dataclasses next to their code; this file
only holds what a training run adds (data, task mixture, optimisation).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchflow.dit import DiTConfig, dit_config
from patchflow.flow import FlowConfig
from patchflow.vae import VAE_PRESETS, VAEConfig
from patchflow.vae_loss import VAELossConfig
from patchflow.weights import config_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataConfig:
    dataset: str = "shapes"          # shapes (built-in world) | folder (videos+captions) | footage | footage+shapes (VAE)
    shapes_share: float = 0.25       # footage+shapes: share of Shapes World clips
    path: str = ""                   # folder dataset root
    sizes: list = field(default_factory=lambda: [[64, 64]])  # (height, width) choices; mixed sizes pack together
    frames: list = field(default_factory=lambda: [17])       # clip lengths to draw from (1 = images)
    split: str = "train"             # Shapes World split: never train on "heldout"
    fps: float = 8.0                 # folder datasets: frames sampled at this rate
    resize: str = "crop"             # folder datasets: crop | pad | stretch to the drawn size
    caption_styles: dict = field(default_factory=lambda: {"short": 0.2, "plain": 0.5, "detailed": 0.3})
    caption_dropout: float = 0.1     # share of empty captions: what classifier-free guidance needs
    length: int = 10_000_000         # virtual length of generated datasets (Shapes World, footage)
    workers: int = 0                 # DataLoader worker processes (0 = in the training process)
    cache: str = ""                  # folder of precomputed latents/text states (`patchflow cache`)


@dataclass
class TaskConfig:
    """Rates of the random task masks (they need not sum to 1; they are normalised).

    Conditioning is free with a per-token timestep: given latent frames are clean
    (t = 0) and excluded from the loss, so one model learns every task.
    """

    text_to_video: float = 0.5       # nothing given
    image_to_video: float = 0.15     # first latent frame given
    extend_forward: float = 0.1      # first k latent frames given
    extend_backward: float = 0.1     # last k latent frames given
    connect: float = 0.15            # first and last latent frames given


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8              # clips per micro-batch per process
    grad_accum: int = 1              # micro-batches per optimizer step
    lr: float = 3e-4
    min_lr: float = 3e-5             # cosine schedule floor
    warmup: int = 100                # linear warmup steps
    schedule: str = "cosine"         # cosine | constant
    weight_decay: float = 0.01
    betas: list = field(default_factory=lambda: [0.9, 0.99])
    grad_clip: float = 1.0           # max global grad norm (0 = off)
    ema_decay: float = 0.999         # EMA of weights (decay warms up from 0.1), used for samples and the final model (0 = off)
    precision: str = "auto"          # auto (bf16 on GPUs that have it, else fp32) | fp32 | bf16 | fp16
    compile: bool = False            # torch.compile the model's blocks
    freeze: list = field(default_factory=list)  # parameter-name prefixes kept fixed, e.g. ["encoder"]: decoder-only VAE tuning
    packing: str = "pack"            # pack (NaViT, first-fit-decreasing into token budgets) | pad (one clip per row)
    token_budget: int = 0            # tokens per packed row; 0 = the longest sample's length
    token_drop: float = 0.0          # share of tokens dropped per sample (NaViT); never condition tokens
    distributed: str = "ddp"         # ddp | fsdp (FSDP2 fully_shard), used when launched by torchrun
    sequence_parallel: int = 1       # ranks sharing one packed batch (Ulysses); divides world size and dit heads
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    seed: int = 0
    deterministic: str = "auto"      # auto (on for CPU) | on | off: bitwise-repeatable kernels, so resume is exact
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    sample_every: int = 0            # write sample videos every N steps (0 = only at the end)
    sample_prompts: list = field(default_factory=lambda: [
        "a small red circle moving right on a black background",
        "a large blue square moving up on a white background",
        "a small yellow triangle bouncing on a gray background",
        "a large green circle growing on a black background"])
    sample_steps: int = 20
    max_bad_steps: int = 5           # consecutive NaN/inf losses before the run stops


@dataclass
class Config:
    dit: dict = field(default_factory=lambda: {"preset": "tiny"})
    vae: dict = field(default_factory=lambda: {"preset": "tiny"})
    text: dict = field(default_factory=lambda: {"encoder": "minilm"})
    flow: FlowConfig = field(default_factory=FlowConfig)
    vae_loss: VAELossConfig = field(default_factory=VAELossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# Valid keys of the free-form model sections: the component config's fields plus how to find it.
_SECTION_KEYS = {
    "dit": {"preset"} | {f.name for f in dataclasses.fields(DiTConfig)},
    "vae": {"preset", "path"} | {f.name for f in dataclasses.fields(VAEConfig)},
    "text": {"encoder"},
}
_TYPED = {"flow": FlowConfig, "vae_loss": VAELossConfig, "data": DataConfig, "tasks": TaskConfig, "train": TrainConfig}


def _check_section(name: str, values: dict) -> None:
    if name in _SECTION_KEYS:
        unknown = sorted(set(values) - _SECTION_KEYS[name])
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in [{name}]; valid keys: {sorted(_SECTION_KEYS[name])}")
    elif name in _TYPED:
        config_from_dict(_TYPED[name], values)  # raises naming the valid keys
    else:
        raise ValueError(f"unknown config section [{name}]; valid sections: {sorted([*_SECTION_KEYS, *_TYPED])}")


def _parse_value(text: str) -> Any:
    """A --set value as TOML (numbers, booleans, lists, quoted strings), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def config_from_data(data: dict) -> Config:
    """Build a Config from nested dicts (TOML tables or a saved run's config.json)."""
    config = Config()
    for name, values in data.items():
        if not isinstance(values, dict):
            raise ValueError(f"config entry {name!r} must be a table like [{name}], got {values!r}")
        _check_section(name, values)
        if name in _SECTION_KEYS:
            # A table naming its own preset or path replaces the default; otherwise it amends it.
            base = {} if {"preset", "path"} & set(values) else getattr(config, name)
            setattr(config, name, {**base, **values})
        else:
            current = dataclasses.asdict(getattr(config, name))
            setattr(config, name, config_from_dict(_TYPED[name], {**current, **values}))
    return config


def load_config(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the TOML file at `path`, then `section.key=value` overrides."""
    data: dict[str, dict] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such config file: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: invalid TOML ({e})") from e
    config = config_from_data(data)
    for item in sets:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--set {item!r}: expected section.key=value, e.g. train.steps=100")
        table = (dataclasses.asdict(getattr(config, section)) if section in _TYPED
                 else dict(getattr(config, section)) if section in _SECTION_KEYS else {})
        table[name] = _parse_value(value.strip())
        config = config_from_data({**{s: dataclasses.asdict(getattr(config, s)) for s in _TYPED},
                                   **{s: getattr(config, s) for s in _SECTION_KEYS}, section: table})
    return config


def build_dit_config(section: dict, in_channels: int, text_dim: int) -> DiTConfig:
    """The DiT config of a [dit] table, sized to the VAE's latent channels and the text width."""
    values = dict(section)
    preset = values.pop("preset", "tiny")
    values.setdefault("in_channels", in_channels)
    values.setdefault("text_dim", text_dim)
    return dit_config(preset, **values)


def build_vae_config(section: dict) -> VAEConfig:
    """The VAE config of a [vae] table with a preset (a `path` is loaded by the caller)."""
    values = {k: v for k, v in section.items() if k not in ("preset", "path")}
    preset = section.get("preset", "tiny")
    if preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {preset!r}; choose from {sorted(VAE_PRESETS)}")
    base = dataclasses.asdict(VAE_PRESETS[preset]())
    return config_from_dict(VAEConfig, {**base, **values})
