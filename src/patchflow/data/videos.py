"""A folder of videos and images with captions, as a training dataset.

    data/
      clip1.mp4  clip2.webm  photo.jpg  frames_dir/ ...
      captions.jsonl      {"file": "clip1.mp4", "caption": "..."}   (or captions.csv: file,caption)
      clip2.txt           a caption beside its file also works

Every file with a caption is used; a file without one is an error naming it
(silently training on empty captions would teach the model to ignore text).
Unreadable or corrupt files are skipped at load time with one warning each and
counted (`skipped`), so a long run never crashes on one bad file.
"""

from __future__ import annotations

import csv
import json
import random
import warnings
from pathlib import Path
from typing import Sequence

from torch.utils.data import Dataset

from patchflow.data.video_processing import to_model_video
from patchflow.data.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoReadError, read_video, resize_video

MEDIA_SUFFIXES = (*VIDEO_SUFFIXES, *IMAGE_SUFFIXES, ".gif")


def read_captions(root: Path) -> dict[str, str]:
    """file name -> caption, from captions.jsonl, captions.csv and per-file .txt files."""
    captions: dict[str, str] = {}
    jsonl, table = root / "captions.jsonl", root / "captions.csv"
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    captions[row["file"]] = row["caption"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{jsonl}:{n}: expected {{\"file\": ..., \"caption\": ...}} ({e})") from e
    if table.is_file():
        with table.open(newline="") as f:
            for row in csv.DictReader(f):
                if "file" not in row or "caption" not in row:
                    raise ValueError(f"{table}: needs the columns file,caption; got {list(row)}")
                captions[row["file"]] = row["caption"]
    for txt in root.glob("*.txt"):
        for suffix in MEDIA_SUFFIXES:
            if (root / f"{txt.stem}{suffix}").exists():
                captions[f"{txt.stem}{suffix}"] = txt.read_text().strip()
        if (root / txt.stem).is_dir():
            captions[txt.stem] = txt.read_text().strip()
    return captions


class FolderDataset(Dataset):
    """Clips from a folder of captioned videos/images at drawn sizes and lengths.

    Item i picks a file (cycling through them), a (height, width) from `sizes`, a
    length from `frames` that the file can fill (images give 1 frame), a start
    time, and resizes with `resize` ("crop" keeps the aspect ratio). Returns None
    for a file that cannot be read (`collate` drops it), after one warning.
    """

    def __init__(self, root: str | Path, sizes: Sequence[tuple[int, int]] = ((64, 64),),
                 frames: Sequence[int] = (17,), fps: float = 8.0, resize: str = "crop", seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        captions = read_captions(self.root)
        files = sorted(p.name for p in self.root.iterdir()
                       if p.suffix.lower() in MEDIA_SUFFIXES or (p.is_dir() and p.name in captions))
        if not files:
            raise ValueError(f"{self.root}: no videos or images (looked for {', '.join(MEDIA_SUFFIXES)})")
        missing = [f for f in files if f not in captions]
        if missing:
            raise ValueError(f"{self.root}: no caption for {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                             "add captions.jsonl, captions.csv or a .txt beside each file")
        self.files, self.captions = files, captions
        self.sizes, self.frames = [tuple(s) for s in sizes], sorted(frames)
        self.fps, self.resize, self.seed = fps, resize, seed
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict | None:
        name = self.files[index % len(self.files)]
        rng = random.Random(self.seed * 1_000_003 + index)
        height, width = rng.choice(self.sizes)
        try:
            video, _ = read_video(self.root / name, fps=self.fps)
        except (VideoReadError, OSError, ValueError) as e:
            if name not in self.skipped:
                self.skipped.add(name)
                warnings.warn(f"skipping unreadable training file {self.root / name}: {e}", stacklevel=2)
            return None
        fits = [f for f in self.frames if f <= len(video)] or [1]
        count = rng.choice(fits)
        start = rng.randint(0, len(video) - count)
        clip = resize_video(video[start:start + count], height, width, self.resize)
        caption = self.captions[name]
        return {"video": to_model_video(clip), "captions": {"plain": caption}, "file": name}
