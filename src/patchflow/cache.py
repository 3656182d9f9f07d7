"""`patchflow cache`: precompute VAE latents and text states of a training dataset.

    patchflow cache --config configs/shapes-world.toml --out cache/sw --items 20000
    patchflow train dit --config configs/shapes-world.toml --set data.cache="cache/sw" --out runs/sw

Each item i of the dataset becomes `latents/XXXXXXXX.safetensors` holding the VAE
posterior's mean and std (training still draws a fresh latent sample every
time) and its captions; caption text states go to `text/` (TextEmbeddingCache).
A training run with `data.cache` set reads items from there and never decodes a
video or runs the VAE encoder. `meta.json` records what the cache was made
from; a run whose data or VAE differ is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from patchflow.config import Config
from patchflow.weights import atomic_write_bytes


def cache_key(config: Config) -> dict:
    """What a cache depends on: the data section (minus cache/workers), the VAE and the text encoder."""
    data = {k: v for k, v in config.to_dict()["data"].items() if k not in ("cache", "workers", "caption_dropout",
                                                                            "caption_styles", "length")}
    return {"data": data, "vae": config.vae, "text": config.text, "seed": config.train.seed}


@torch.no_grad()
def build_cache(config: Config, out: str | Path, items: int, progress: bool = True) -> Path:
    """Encode the first `items` dataset items into `out` (resumable: existing files are kept)."""
    from patchflow.text import TextEmbeddingCache, load_text_encoder
    from patchflow.train import build_dataset
    from patchflow.train_stages import load_vae

    if items < 1:
        raise ValueError(f"--items must be >= 1, got {items}")
    out = Path(out)
    meta_path = out / "meta.json"
    key = cache_key(config)
    if meta_path.is_file() and json.loads(meta_path.read_text())["key"] != key:
        raise ValueError(f"{out} holds a cache of other data or another VAE; choose another --out")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vae = load_vae(config.vae, device).eval()
    text = TextEmbeddingCache(out / "text", load_text_encoder(config.text["encoder"], device))
    dataset = build_dataset(config, "dit")
    (out / "latents").mkdir(parents=True, exist_ok=True)
    done = 0
    for i in tqdm(range(min(items, len(dataset))), disable=not progress, desc="caching latents"):
        path = out / "latents" / f"{i:08d}.safetensors"
        if path.is_file():
            done += 1
            continue
        item = dataset[i]
        if item is None:  # unreadable file: already warned about
            continue
        dist = vae.encode(item["video"][None].to(device))
        captions = item["captions"]
        text.encode(sorted(set(captions.values()) | {""}))
        tmp = path.with_suffix(".tmp")
        save_file({"mean": dist.mean[0].cpu().contiguous(), "std": dist.std[0].cpu().contiguous()}, str(tmp),
                  metadata={"captions": json.dumps(captions)})
        tmp.replace(path)
        done += 1
    atomic_write_bytes(meta_path, (json.dumps({"key": key, "items": items}, indent=2) + "\n").encode())
    return out


class CachedLatents(Dataset):
    """Items from a `patchflow cache` folder: `{"latent": (mean, std), "captions": {...}}`."""

    def __init__(self, directory: str | Path, config: Config):
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"data.cache={directory!s}: no meta.json; run `patchflow cache` first")
        meta = json.loads(meta_path.read_text())
        if meta["key"] != cache_key(config):
            raise ValueError(f"data.cache={directory!s} was made from other data, VAE or text encoder settings; "
                             "rebuild it with `patchflow cache`")
        self.files = sorted((self.directory / "latents").glob("*.safetensors"))
        if not self.files:
            raise ValueError(f"data.cache={directory!s} holds no latents")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        with safe_open(str(self.files[index]), "pt") as f:
            captions = json.loads(f.metadata()["captions"])
            return {"latent": (f.get_tensor("mean"), f.get_tensor("std")), "captions": captions}
