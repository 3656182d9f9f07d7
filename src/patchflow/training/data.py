"""The training dataset a config's [data] table names, and the order training reads it in.

    build_dataset(config.data, seed)   # Shapes World | folder of videos | footage (+ shapes)
    DataLoader(dataset, batch_sampler=StepSampler(...), collate_fn=collate)

Every item is a dict with `captions` and `video` float [3, T, H, W] in [-1, 1] (a
`patchflow cache` folder gives `latent` instead: training/cache.py). Generated datasets
depend only on (seed, index), so any worker count or resume point sees the same
item for the same index.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset, Sampler

from patchflow.data.datasets import ShapesDataset

if TYPE_CHECKING:  # hints only
    from patchflow.training.config import DataConfig
    from patchflow.training.distributed import DistInfo


def build_dataset(d: DataConfig, seed: int) -> Dataset:
    """The clips the [data] table `d` names (its `cache` is the DiT stage's business: training/cache.py)."""
    sizes = [tuple(s) for s in d.sizes]
    if d.dataset == "shapes":
        if d.split == "heldout":
            raise ValueError("data.split='heldout' would train on the held-out combinations; use 'train'")
        return ShapesDataset(d.length, sizes, d.frames, d.split, seed, d.focus, d.focus_share)
    if d.dataset == "folder":
        from patchflow.data.videos import FolderDataset

        return FolderDataset(d.path, sizes, d.frames, d.fps, d.resize, seed)
    if d.dataset in ("footage", "footage+shapes"):
        from patchflow.data.footage import FootageDataset

        footage = _Captionless(FootageDataset(d.frames, sizes, d.length, seed))
        if d.dataset == "footage":
            return footage
        return _Mixed(footage, ShapesDataset(d.length, sizes, d.frames, "train", seed), d.shapes_share, seed)
    raise AssertionError(f"data.dataset {d.dataset!r}")  # DataConfig checks the choice


class _Mixed(Dataset):
    """Item i comes from `b` with probability `share` (decided by (seed, i)), else from `a`."""

    def __init__(self, a, b, share: float, seed: int):
        if not 0 <= share <= 1:
            raise ValueError(f"data.shapes_share must be in [0, 1], got {share}")
        self.a, self.b, self.share, self.seed = a, b, share, seed

    def __len__(self) -> int:
        return min(len(self.a), len(self.b))

    def __getitem__(self, index: int) -> dict:
        item = (self.b if random.Random(self.seed * 7919 + index).random() < self.share else self.a)[index]
        return {"video": item["video"], "captions": item["captions"]}


class _Captionless(Dataset):
    """Wrap a dataset of bare video tensors (VAE data) into the item dict the stages expect."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        return {"video": self.inner[index], "captions": {"plain": ""}}


# ---------------------------------------------------------------- the order the loop reads it in
class StepSampler(Sampler):
    """Index lists for micro-batch (step, micro) of this rank, from `start_step` on.

    Global position g = ((step * accum + micro) * world + rank) * batch + i walks a
    fresh seeded permutation per epoch, so the data order depends only on the
    global batch layout, never on how many processes share it.
    """

    def __init__(self, length: int, batch: int, accum: int, info: DistInfo, start_step: int, steps: int,
                 seed: int, shuffle: bool):
        self.length, self.batch, self.accum, self.info = length, batch, accum, info
        self.start, self.steps, self.seed, self.shuffle = start_step, steps, seed, shuffle
        self._perm: tuple[int, torch.Tensor] | None = None

    def _index(self, g: int) -> int:
        epoch, pos = divmod(g, self.length)
        if not self.shuffle:
            return pos
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch)))
        return int(self._perm[1][pos])

    def __iter__(self):
        w, r = self.info.world_size, self.info.rank
        for step in range(self.start, self.steps):
            for micro in range(self.accum):
                first = ((step * self.accum + micro) * w + r) * self.batch
                yield [self._index(first + i) for i in range(self.batch)]

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum


def collate(items: list) -> dict:
    """A DataLoader batch as lists per key (clips differ in shape), without unreadable items; counts those."""
    kept = [it for it in items if it is not None]  # None: an unreadable file, already warned about
    batch = {key: [it[key] for it in kept] for key in (kept[0] if kept else {"captions": None})}
    batch["skipped"] = len(items) - len(kept)
    return batch
