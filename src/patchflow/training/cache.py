"""The latent cache: everything about it in one place (its key, item format, writer and reader).

    patchflow cache --config configs/shapes-world.toml --out cache/sw --items 20000
    patchflow train dit --config configs/shapes-world.toml --set data.cache="cache/sw" --out runs/sw

Layout of a cache folder:

    meta.json                     {"key": what it was made from, "items": how many}
    latents/XXXXXXXX.safetensors  item i: the VAE posterior's "mean" and "std" [C, T', H', W'],
                                  its captions (JSON) in the file's metadata
    text/                         caption text states (text.TextEmbeddingCache)

Training still draws a fresh latent sample from each posterior every time it reads an item.
A run with `data.cache` set reads items through `CachedLatents` and never decodes a video or
runs the VAE encoder; a run whose data, VAE or text encoder differ from the key is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from patchflow.training.data import build_dataset
from patchflow.weights import atomic_write_bytes

if TYPE_CHECKING:  # hints only
    from patchflow.training.config import Config


# ---------------------------------------------------------------- the key
def _weights_digest(folder: str) -> str:
    """sha1 of a VAE folder's weights: a VAE retrained at the same path must not reuse an old cache."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        return ""  # a missing VAE is reported where it is loaded
    digest = hashlib.sha1()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(config: Config) -> dict:
    """What a cache depends on: the data section (minus cache/workers), the VAE (its settings and,
    for a trained one, its weights) and the text encoder. The cache holds raw posteriors, so the
    VAE's latent statistics (applied at load time by `normalize`) are not part of it."""
    data = {k: v for k, v in config.to_dict()["data"].items() if k not in ("cache", "workers", "caption_dropout",
                                                                            "attribute_dropout", "caption_styles",
                                                                            "length")}
    if not data.get("focus_share"):  # no focus: the same clips as before the option existed (old caches stay valid)
        data = {k: v for k, v in data.items() if k not in ("focus", "focus_share")}
    vae = config.vae.table()
    if config.vae.path:  # the weights name the VAE; how its path is spelled (relative, absolute) does not
        vae = {**{k: v for k, v in vae.items() if k != "path"}, "weights": _weights_digest(config.vae.path)}
    return {"data": data, "vae": vae, "text": config.text.table(), "seed": config.train.seed}


# ---------------------------------------------------------------- one item
def write_item(path: Path, mean: torch.Tensor, std: torch.Tensor, captions: dict[str, str]) -> None:
    """Write one item atomically (a .tmp file renamed into place): an interrupted cache resumes cleanly."""
    tmp = path.with_suffix(".tmp")
    save_file({"mean": mean.cpu().contiguous(), "std": std.cpu().contiguous()}, str(tmp),
              metadata={"captions": json.dumps(captions)})
    tmp.replace(path)


def read_item(path: Path) -> dict:
    """`{"latent": (mean, std), "captions": {...}}`: the item format training reads."""
    with safe_open(str(path), "pt") as f:
        return {"latent": (f.get_tensor("mean"), f.get_tensor("std")), "captions": json.loads(f.metadata()["captions"])}


def by_shape(videos: list[torch.Tensor]) -> dict[tuple, list[int]]:
    """Indices of same-shape clips, so each shape runs through a model as one batch."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, v in enumerate(videos):
        groups[tuple(v.shape)].append(i)
    return groups


# ---------------------------------------------------------------- the reader
class CachedLatents(Dataset):
    """The items of a cache folder, refused unless it was made with `key` (see `cache_key`)."""

    def __init__(self, directory: str | Path, key: dict):
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"data.cache={directory!s}: no meta.json; run `patchflow cache` first")
        if json.loads(meta_path.read_text())["key"] != key:
            raise ValueError(f"data.cache={directory!s} was made from other data, VAE or text encoder settings; "
                             "rebuild it with `patchflow cache`")
        self.files = sorted((self.directory / "latents").glob("*.safetensors"))
        if not self.files:
            raise ValueError(f"data.cache={directory!s} holds no latents")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        return read_item(self.files[index])


# ---------------------------------------------------------------- the writer
@torch.no_grad()
def build_cache(config: Config, out: str | Path, items: int, progress: bool = True, batch: int = 32) -> Path:
    """Encode the first `items` items of the config's dataset into `out` (resumable: existing files are kept).

    Items are read `batch` at a time; clips of one shape go through the VAE together and all
    new captions through the text encoder in one call (about 10x faster than one by one on a CPU).
    """
    from patchflow.models.text import TextEmbeddingCache, load_text_encoder

    if items < 1:
        raise ValueError(f"--items must be >= 1, got {items}")
    out = Path(out)
    meta_path = out / "meta.json"
    key = cache_key(config)
    if meta_path.is_file() and json.loads(meta_path.read_text())["key"] != key:
        raise ValueError(f"{out} holds a cache of other data or another VAE; choose another --out")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vae = config.vae.load(device).eval()
    text = TextEmbeddingCache(out / "text", load_text_encoder(config.text.encoder, device))
    dataset = build_dataset(config.data, config.train.seed)
    (out / "latents").mkdir(parents=True, exist_ok=True)
    total = min(items, len(dataset))
    with tqdm(total=total, disable=not progress, desc="caching latents") as bar:
        for first in range(0, total, batch):
            paths = {i: out / "latents" / f"{i:08d}.safetensors" for i in range(first, min(first + batch, total))}
            todo = [(i, dataset[i]) for i, path in paths.items() if not path.is_file()]
            todo = [(i, item) for i, item in todo if item is not None]  # None: unreadable file, already warned
            if todo:
                text.encode(sorted({c for _, item in todo for c in item["captions"].values()} | {""}))
                for idx in by_shape([item["video"] for _, item in todo]).values():
                    dist = vae.encode(torch.stack([todo[j][1]["video"] for j in idx]).to(device))  # (n, 3, T, H, W)
                    for k, j in enumerate(idx):
                        i, item = todo[j]
                        write_item(paths[i], dist.mean[k], dist.std[k], item["captions"])
            bar.update(len(paths))
    atomic_write_bytes(meta_path, (json.dumps({"key": key, "items": items}, indent=2) + "\n").encode())
    return out
