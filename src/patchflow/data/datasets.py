"""Torch datasets that yield training clips with their captions.

Each item is a dict: `video` float [3, T, H, W] in [-1, 1], `captions`
({"short", "plain", "detailed"}; real data may have only "plain"), and for the
Shapes World the ground-truth `record`. Clips differ in size and length, so a
DataLoader batches them as lists (`build.collate`); packing happens later.
"""

from __future__ import annotations

import random
from typing import Sequence

from torch.utils.data import Dataset

from patchflow.shapes.captions import captions
from patchflow.shapes.world import MAX_FRAMES, MAX_SIDE, MIN_SIDE, SHAPES, SIZES, SPLITS, render_scene, sample_scene
from patchflow.data.video_processing import to_model_video


def check_focus(focus: str, share: float) -> tuple[str, ...]:
    """The words of a focus ("small triangle", "triangle", "large"): sizes and shapes of the world."""
    words = tuple(focus.split())
    unknown = [w for w in words if w not in SIZES and w not in SHAPES]
    if unknown or sum(w in SIZES for w in words) > 1 or sum(w in SHAPES for w in words) > 1:  # one of each at most
        raise ValueError(f"focus must be a size and/or a shape ({sorted(SIZES)}, {list(SHAPES)}), got {focus!r}")
    if not 0.0 <= share <= 1.0 or (share > 0 and not words):
        raise ValueError(f"focus_share must be in [0, 1] (and > 0 only with a focus), got {share!r} for {focus!r}")
    return words


def _matches(record, focus: tuple[str, ...]) -> bool:
    """A one-object scene whose object has every word of the focus."""
    return len(record.objects) == 1 and all(w in (record.objects[0].size, record.objects[0].shape) for w in focus)


class ShapesDataset(Dataset):
    """Shapes World clips at any mixture of sizes and lengths, deterministic per index.

    sizes: (height, width) pairs to draw from; frames: clip lengths to draw from.
    focus, focus_share: that share of items is a one-object scene whose object has the focus's size
    and/or shape ("small triangle"): more of what a model gets wrong (benchmarks/RESULTS.md, "Eighth sitting").
    Item i depends only on (seed, i), so any worker count or resume point sees the
    same clip for the same index.
    """

    def __init__(self, length: int = 100_000, sizes: Sequence[tuple[int, int]] = ((64, 64),),
                 frames: Sequence[int] = (17,), split: str = "train", seed: int = 0, focus: str = "",
                 focus_share: float = 0.0):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if not sizes or not frames:
            raise ValueError("sizes and frames must each name at least one value")
        for h, w in sizes:
            if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
                raise ValueError(f"size {h}x{w}: sides must be {MIN_SIDE} to {MAX_SIDE} pixels")
        for f in frames:
            if not 1 <= f <= MAX_FRAMES:
                raise ValueError(f"frames={f}: clips have 1 to {MAX_FRAMES} frames")
        self.length, self.split, self.seed = length, split, seed
        self.focus, self.focus_share = check_focus(focus, focus_share), float(focus_share)
        self.sizes = [tuple(s) for s in sizes]
        self.frames = list(frames)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} clips")
        rng = random.Random(self.seed * 1_000_003 + index)
        record = sample_scene(rng, self.split)
        if self.focus and rng.random() < self.focus_share:  # a one-object scene of the focus instead
            while not _matches(record, self.focus):
                record = sample_scene(rng, self.split, num_objects=1)
        height, width = rng.choice(self.sizes)
        frames = rng.choice(self.frames)
        video = render_scene(record, height, width, frames)
        return {"video": to_model_video(video), "captions": captions(record, seed=index),
                "record": record.to_dict()}
