"""Contact sheets: tile several videos (with captions) into one video or image."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def video_grid(videos: list[np.ndarray], captions: list[str] | None = None, cols: int | None = None,
               scale: int = 2, gap: int = 4) -> np.ndarray:
    """Tile uint8 videos [T_i, H_i, W_i, 3] into one uint8 video [T, H, W, 3].

    Each cell is upscaled `scale`x (nearest), shorter clips hold their last frame,
    and an optional caption is written under each cell.
    """
    if not videos:
        raise ValueError("video_grid needs at least one video")
    if captions is not None and len(captions) != len(videos):
        raise ValueError(f"got {len(captions)} captions for {len(videos)} videos")
    cols = cols or int(np.ceil(np.sqrt(len(videos))))
    rows = int(np.ceil(len(videos) / cols))
    cell_h = max(v.shape[1] for v in videos) * scale
    cell_w = max(v.shape[2] for v in videos) * scale
    wrap = max(8, cell_w // 6)  # characters per caption line (the default font is ~6 px wide)
    wrapped = [textwrap.wrap(c, width=wrap) for c in captions] if captions else []
    text_h = 11 * max(map(len, wrapped)) + 4 if captions else 0
    frames = max(v.shape[0] for v in videos)
    out = np.full((frames, rows * (cell_h + text_h + gap) + gap, cols * (cell_w + gap) + gap, 3), 255, np.uint8)
    font = ImageFont.load_default()
    for i, video in enumerate(videos):
        r, c = divmod(i, cols)
        top, left = gap + r * (cell_h + text_h + gap), gap + c * (cell_w + gap)
        big = video.repeat(scale, 1).repeat(scale, 2)  # (T, H*scale, W*scale, 3)
        idx = np.minimum(np.arange(frames), len(video) - 1)
        out[:, top:top + big.shape[1], left:left + big.shape[2]] = big[idx]
        if captions:
            label = Image.new("RGB", (cell_w, text_h), (255, 255, 255))
            ImageDraw.Draw(label).multiline_text((2, 2), "\n".join(wrapped[i]), fill=(0, 0, 0), font=font, spacing=1)
            out[:, top + cell_h:top + cell_h + text_h, left:left + cell_w] = np.asarray(label)
    return out


def contact_sheet(videos: list[np.ndarray], captions: list[str], path: str | Path, columns: int = 4,
                  per_row: int = 1) -> Path:
    """One PNG: each video a captioned strip of `columns` evenly spaced frames (first and last
    included), `per_row` strips side by side."""
    strips = []
    for video in videos:
        picks = np.linspace(0, len(video) - 1, min(columns, len(video))).round().astype(int)
        strips.append(np.concatenate([video[i] for i in picks], axis=1)[None])  # (1, H, k*W, 3)
    Image.fromarray(video_grid(strips, captions, cols=per_row)[0]).save(path)
    return Path(path)
