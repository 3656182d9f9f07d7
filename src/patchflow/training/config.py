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
holds how a run names them (`DiTSection`, `VAESection`, `TextSection`: a preset or a
path plus field overrides) and what a training run adds (data, task mixture,
optimisation). Every fixed-choice field is checked in its dataclass's
`__post_init__`, so a bad value fails when the config is read, naming the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from patchflow.data.datasets import check_focus
from patchflow.data.io import RESIZE_MODES
from patchflow.shapes.world import SPLITS
from patchflow.models.dit import DIT_PRESETS, DiTConfig, dit_config
from patchflow.flow import FlowConfig
from patchflow.pipelines.prompts import DEFAULT_CAPTION_WEIGHTS
from patchflow.models.text import check_text_encoder_spec
from patchflow.models.vae import VAE_PRESETS, VAEConfig, VideoVAE
from patchflow.training.vae_loss import VAELossConfig
from patchflow.weights import config_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


DATASETS = ("shapes", "folder", "footage", "footage+shapes")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PACKINGS = ("pack", "pad")
DISTRIBUTED = ("ddp", "fsdp")
SWITCHES = ("auto", "on", "off")


def _choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")


def _overrides(section: str, cls: type, values: dict) -> dict:
    """`values` if every key is a field of `cls`, else a ValueError naming the valid keys."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        valid = sorted({"preset"} | ({"path"} if section == "vae" else set()) | {f.name for f in dataclasses.fields(cls)})
        raise ValueError(f"unknown key(s) {unknown} in [{section}]; valid keys: {valid}")
    return dict(values)


# ---------------------------------------------------------------- the model sections
# A TOML table names a preset (or, for the VAE, a trained folder) and amends it with fields of the
# component's own config; `table()` gives back exactly the keys that were set (config.json, cache keys).
@dataclass
class DiTSection:
    """[dit]: a preset of dit.DIT_PRESETS amended by DiTConfig fields, e.g. depth = 4."""

    preset: str = "tiny"
    overrides: dict = field(default_factory=dict)  # DiTConfig fields; in_channels/text_dim default to the VAE/text

    def __post_init__(self) -> None:
        _choice("dit.preset", self.preset, tuple(DIT_PRESETS))
        self.overrides = _overrides("dit", DiTConfig, self.overrides)

    @classmethod
    def from_table(cls, table: dict) -> DiTSection:
        table = dict(table)
        return cls(preset=table.pop("preset", "tiny"), overrides=table)

    def table(self) -> dict:
        return {"preset": self.preset, **self.overrides}

    def build(self, in_channels: int, text_dim: int) -> DiTConfig:
        """The DiT config, sized to the VAE's latent channels and the text width unless overridden."""
        return dit_config(self.preset, **{"in_channels": in_channels, "text_dim": text_dim, **self.overrides})


@dataclass
class VAESection:
    """[vae]: a trained VAE folder (`path`), or a preset of vae.VAE_PRESETS amended by VAEConfig fields.

    With a path the preset and fields are not used (a --set vae.path=... may point any config at a
    trained VAE)."""

    path: str = ""                                  # a trained VAE folder, e.g. runs/shapes-vae/final/vae
    preset: str = ""                                # "" = "tiny" (when there is no path)
    overrides: dict = field(default_factory=dict)   # VAEConfig fields

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise ValueError(f"vae.path must be a folder path string, got {self.path!r}")
        if self.preset:
            _choice("vae.preset", self.preset, tuple(VAE_PRESETS))
        self.overrides = _overrides("vae", VAEConfig, self.overrides)
        if not self.path:
            self.build()  # VAEConfig checks its own values

    @classmethod
    def from_table(cls, table: dict) -> VAESection:
        table = dict(table)
        return cls(path=table.pop("path", ""), preset=table.pop("preset", ""), overrides=table)

    def table(self) -> dict:
        return {**({"path": self.path} if self.path else {}), **({"preset": self.preset} if self.preset else {}),
                **self.overrides}

    def load(self, device: torch.device | str = "cpu") -> VideoVAE:
        """The VAE this table names on `device`: the trained folder `path`, or a freshly initialised preset."""
        vae = VideoVAE.from_pretrained(self.path) if self.path else VideoVAE(self.build())
        return vae.to(device)

    def build(self) -> VAEConfig:
        """The VAE config of the preset and fields (a `path` is read by `load`)."""
        base = dataclasses.asdict(VAE_PRESETS[self.preset or "tiny"]())
        if self.overrides.get("latent_channels", base["latent_channels"]) != base["latent_channels"]:
            for stat in ("latent_mean", "latent_std", "latent_whiten"):  # sized for the preset's channels
                base[stat] = []
        return config_from_dict(VAEConfig, {**base, **self.overrides})


@dataclass
class TextSection:
    """[text]: the text encoder, "minilm" (all-MiniLM-L6-v2, the default), "tiny" or a model folder."""

    encoder: str = "minilm"

    def __post_init__(self) -> None:
        check_text_encoder_spec(self.encoder)

    @classmethod
    def from_table(cls, table: dict) -> TextSection:
        return config_from_dict(cls, table)

    def table(self) -> dict:
        return {"encoder": self.encoder}


# ---------------------------------------------------------------- what a training run adds
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
    caption_styles: dict = field(default_factory=lambda: dict(DEFAULT_CAPTION_WEIGHTS))  # style -> weight
    caption_dropout: float = 0.1     # share of empty captions: what classifier-free guidance needs
    attribute_dropout: float = 0.0   # Shapes World: share of captions with one attribute left out (compositional)
    focus: str = ""                  # Shapes World: a size and/or shape ("small triangle") drawn more often ...
    focus_share: float = 0.0         # ... as this share of the clips (one-object scenes of it)
    length: int = 10_000_000         # virtual length of generated datasets (Shapes World, footage)
    workers: int = 0                 # DataLoader worker processes (0 = in the training process)
    cache: str = ""                  # folder of precomputed latents/text states (`patchflow cache`)

    def __post_init__(self) -> None:
        _choice("data.dataset", self.dataset, DATASETS)
        _choice("data.split", self.split, SPLITS)
        _choice("data.resize", self.resize, RESIZE_MODES)
        if not 0.0 <= self.attribute_dropout <= 1.0:
            raise ValueError(f"data.attribute_dropout must be in [0, 1], got {self.attribute_dropout}")
        if self.focus_share and self.dataset != "shapes":
            raise ValueError(f"data.focus_share needs data.dataset = \"shapes\", got {self.dataset!r}")
        try:
            check_focus(self.focus, self.focus_share)
        except ValueError as e:
            raise ValueError(f"data.{e}") from None
        if self.attribute_dropout and "shapes" not in self.dataset:
            raise ValueError(f"data.attribute_dropout needs Shapes World captions (data.dataset = \"shapes\" or "
                             f"\"footage+shapes\"), got data.dataset = {self.dataset!r}")


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
    init_from: str = ""              # warm start: the trained weights of a run or pipeline folder (its final/, the
                                     # stage's component) before step 0, e.g. a text-to-image DiT before video;
                                     # the DiT stage also takes a checkpoint file (its EMA weights)
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

    def __post_init__(self) -> None:
        _choice("train.schedule", self.schedule, SCHEDULES)
        _choice("train.precision", self.precision, PRECISIONS)
        _choice("train.packing", self.packing, PACKINGS)
        _choice("train.distributed", self.distributed, DISTRIBUTED)
        _choice("train.deterministic", self.deterministic, SWITCHES)


@dataclass
class Config:
    dit: DiTSection = field(default_factory=DiTSection)
    vae: VAESection = field(default_factory=lambda: VAESection(preset="tiny"))
    text: TextSection = field(default_factory=TextSection)
    flow: FlowConfig = field(default_factory=FlowConfig)
    vae_loss: VAELossConfig = field(default_factory=VAELossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Nested plain dicts, the TOML tables' form (what a run's config.json holds)."""
        return {name: section_table(self, name) for name in SECTIONS}


_MODEL = {"dit": DiTSection, "vae": VAESection, "text": TextSection}
_TYPED = {"flow": FlowConfig, "vae_loss": VAELossConfig, "data": DataConfig, "tasks": TaskConfig, "train": TrainConfig}
SECTIONS = (*_MODEL, *_TYPED)


def section_table(config: Config, name: str) -> dict:
    """Section `name` of `config` as its TOML table (plain, JSON-safe values)."""
    section = getattr(config, name)
    table = section.table() if name in _MODEL else dataclasses.asdict(section)
    return json.loads(json.dumps(table))


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
        if name not in SECTIONS:
            raise ValueError(f"unknown config section [{name}]; valid sections: {sorted(SECTIONS)}")
        if not isinstance(values, dict):
            raise ValueError(f"config entry {name!r} must be a table like [{name}], got {values!r}")
        if name in _MODEL:
            # A table naming its own preset or path replaces the default; otherwise it amends it.
            base = {} if {"preset", "path"} & set(values) else section_table(config, name)
            setattr(config, name, _MODEL[name].from_table({**base, **values}))
        else:
            setattr(config, name, config_from_dict(_TYPED[name], {**section_table(config, name), **values}))
    return config


def load_config(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the TOML file (or a run's config.json) at `path`, then `section.key=value` overrides."""
    data: dict[str, dict] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such config file: {path}")
        if path.suffix == ".json":  # a run's config.json: rerun or resume it as it was
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: invalid JSON ({e})") from e
            data.pop("stage", None)  # the run's stage, which the command line names
        else:
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
        table = section_table(config, section) if section in SECTIONS else {}
        table[name] = _parse_value(value.strip())
        config = config_from_data({**config.to_dict(), section: table})
    return config
