"""The Shapes World evaluator: does a video follow its prompt?

Implements the spec's Evaluation section (docs/shapes-world.md). Each pixel is
labelled with the nearest palette colour (7 object + 3 background colours); the
pixels of a named colour are that object. A clip passes when, for every object
it names, all of these hold:

    background  nearest palette background to the median border pixel is the named one
    presence    object area >= 40% (50% with two objects) of the expected area in >= 75% of frames
    shape       fill ratio (area / bounding box) fits the shape (single-object scenes)
    motion      centroid moves the named way by >= 0.15 canvas between the first and last
                quarter; still < 0.05 (0.12 with two objects); growing/shrinking: area
                ratio >= 1.3 or <= 1/1.3; bouncing: the velocity sign flips at least once
    stability   translations: area coefficient of variation < 0.3

Project choices where the spec is silent: translation, stillness and size change
are judged on the first 17 frames (2 s, the span for which the world guarantees
translations touch no edge); single frames (images) are not judged on motion or
stability; shape is judged only in frames where the object is at least
MIN_SHAPE_PIXELS = 10 pixels across (a 6-pixel circle and square have nearly the
same fill ratio); a prompt without a size is judged against the small size's area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from patchflow.shapes.world import (
    BACKGROUNDS, COLORS, REFERENCE_FRAMES, TRANSLATIONS, TRIANGLE_HEIGHT, FPS,
    SceneRecord, SceneSpec, object_side, parse_prompt, scale_at,
)

ATTRIBUTES = ("background", "presence", "shape", "motion", "stability")
MIN_SHAPE_PIXELS = 10  # below this a shape is a few pixels and its fill ratio says little
FILL_RATIO = {"square": (0.85, 1.01), "circle": (0.68, 0.90), "triangle": (0.35, 0.68)}
_PALETTE_NAMES = (*COLORS, *BACKGROUNDS)
_PALETTE = np.array([*COLORS.values(), *BACKGROUNDS.values()], dtype=np.float32)  # [10, 3]


@dataclass
class EvalResult:
    """Per-attribute verdicts (None = not judged for this clip) and measurements."""

    checks: dict[str, bool | None]
    details: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(v is not False for v in self.checks.values())


def label_pixels(video: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour for each pixel: uint8 [T, H, W, 3] -> int [T, H, W]."""
    flat = video.reshape(-1, 1, 3).astype(np.float32)  # (T*H*W, 1, 3)
    dist = ((flat - _PALETTE[None]) ** 2).sum(-1)  # (T*H*W, 10)
    return dist.argmin(-1).reshape(video.shape[:3])


def _open(mask: np.ndarray) -> np.ndarray:
    """3x3 binary opening per frame: removes specks of stray colour. mask [T, H, W]."""
    def shifts(m: np.ndarray, op) -> np.ndarray:
        p = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=op is np.logical_and)
        out = p[:, 1:-1, 1:-1].copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out = op(out, p[:, dy:dy + m.shape[1], dx:dx + m.shape[2]])
        return out
    return shifts(shifts(mask, np.logical_and), np.logical_or)


def _object_pixels(mask: np.ndarray, despeckle: bool) -> np.ndarray:
    """The object's pixels: the colour mask, without stray specks far from the object.

    An opening finds where the object is; the raw mask is then kept within that
    region's bounding box grown by 2 pixels, so thin parts an opening would erase
    (a triangle's apex) still count. Objects under 8 pixels skip this: an opening
    would erase them. mask [T, H, W] -> [T, H, W].
    """
    if not despeckle:
        return mask
    core = _open(mask)
    keep = np.zeros_like(mask)
    for t in np.flatnonzero(core.any((1, 2))):
        rows, cols = np.flatnonzero(core[t].any(1)), np.flatnonzero(core[t].any(0))
        keep[t, max(rows[0] - 2, 0): rows[-1] + 3, max(cols[0] - 2, 0): cols[-1] + 3] = True
    return mask & keep


def _expected_area(shape: str, side: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return math.pi * side ** 2 / 4
    if shape == "square":
        return side ** 2
    return TRIANGLE_HEIGHT * side ** 2 / 2


def _flip(series: np.ndarray, threshold: float) -> bool:
    """True when the series rises then falls (or falls then rises) by >= threshold each way."""
    s = series[~np.isnan(series)]
    if len(s) < 3:
        return False
    hi, lo = int(np.argmax(s)), int(np.argmin(s))
    peak = s[hi] - s[: hi + 1].min() >= threshold and s[hi] - s[hi:].min() >= threshold
    trough = s[: lo + 1].max() - s[lo] >= threshold and s[lo:].max() - s[lo] >= threshold
    return bool(peak or trough)


def evaluate_video(video: np.ndarray, target: SceneRecord | SceneSpec | str) -> EvalResult:
    """Score a video (uint8 [T, H, W, 3]) against a record, a parsed spec or a plain prompt."""
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a uint8 video [T, H, W, 3], got {video.dtype} {video.shape}")
    scene = parse_prompt(target) if isinstance(target, str) else target
    frames, height, width = video.shape[:3]
    labels = label_pixels(video)
    two = len(scene.objects) == 2
    checks: dict[str, bool | None] = {}
    details: dict[str, float] = {}

    if scene.background is not None:
        border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], 1)
        median = np.median(border.reshape(-1, 3), 0).astype(np.float32)
        bg_names = tuple(BACKGROUNDS)
        nearest = bg_names[int(((_PALETTE[len(COLORS):] - median) ** 2).sum(-1).argmin())]
        checks["background"] = nearest == scene.background

    seconds = np.arange(frames) / FPS
    window = min(frames, REFERENCE_FRAMES)
    quarter = max(1, window // 4)
    for k, obj in enumerate(scene.objects):
        p = f"obj{k}." if two else ""
        side = object_side(obj.size or "small", height, width) * scale_at(obj.motion, seconds)
        mask = _object_pixels(labels == _PALETTE_NAMES.index(obj.color), side.min() >= 8)
        area = mask.sum((1, 2)).astype(np.float64)  # [T]
        present = area >= (0.5 if two else 0.4) * _expected_area(obj.shape, side)
        checks[p + "presence"] = bool(present.mean() >= 0.75)
        details[p + "presence"] = float(present.mean())

        ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = (mask.sum(1) * xs).sum(1) / area / width  # [T] canvas fractions
            cy = (mask.sum(2) * ys).sum(1) / area / height
        seen = area > 0

        if not two:
            fills = []
            for t in np.flatnonzero(seen & (side >= MIN_SHAPE_PIXELS)):
                rows, cols = np.flatnonzero(mask[t].any(1)), np.flatnonzero(mask[t].any(0))
                fills.append(area[t] / ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)))
            if fills or (side >= MIN_SHAPE_PIXELS).any():
                fill = float(np.median(fills)) if fills else 0.0
                lo, hi = FILL_RATIO[obj.shape]
                checks["shape"] = lo <= fill <= hi
                details["fill_ratio"] = fill
            else:
                checks["shape"] = None

        if frames < 2:
            checks[p + "motion"] = None
            continue
        first, last = slice(0, quarter), slice(window - quarter, window)

        def mean(v: np.ndarray, s: slice) -> float:
            vals = v[s][seen[s]]
            return float(vals.mean()) if len(vals) else float("nan")

        dx, dy = mean(cx, last) - mean(cx, first), mean(cy, last) - mean(cy, first)
        if obj.motion in TRANSLATIONS:
            ux, uy = TRANSLATIONS[obj.motion]
            along = dx * ux + dy * uy
            checks[p + "motion"] = bool(along >= 0.15)
            details[p + "displacement"] = along
            a = area[:window][seen[:window]]
            cv = float(a.std() / a.mean()) if len(a) else float("inf")
            checks[p + "stability"] = cv < 0.3
            details[p + "area_cv"] = cv
        elif obj.motion == "standing still":
            moved = math.hypot(dx, dy)
            checks[p + "motion"] = bool(moved < (0.12 if two else 0.05))
            details[p + "displacement"] = moved
        elif obj.motion in ("growing", "shrinking"):
            ratio = mean(area, last) / max(mean(area, first), 1e-9)
            checks[p + "motion"] = bool(ratio >= 1.3 if obj.motion == "growing" else ratio <= 1 / 1.3)
            details[p + "area_ratio"] = ratio
        else:  # bouncing
            checks[p + "motion"] = _flip(np.where(seen, cx, np.nan), 0.05) or _flip(np.where(seen, cy, np.nan), 0.05)
    checks = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in checks.items()}
    return EvalResult(checks, details)


def attribute_of(check: str) -> str:
    """`obj1.motion` -> `motion`."""
    return check.rsplit(".", 1)[-1]


def summarize(results: list[EvalResult]) -> dict[str, float]:
    """Share of clips fully correct (`all`) and per-attribute pass shares over judged clips."""
    if not results:
        raise ValueError("no results to summarize")
    out = {"all": float(np.mean([r.passed for r in results])), "count": float(len(results))}
    for attr in ATTRIBUTES:
        verdicts = []
        for r in results:
            judged = [v for k, v in r.checks.items() if attribute_of(k) == attr and v is not None]
            if judged:
                verdicts.append(all(judged))
        if verdicts:
            out[attr] = float(np.mean(verdicts))
    return out
