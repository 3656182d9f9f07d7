"""Shapes World: the built-in procedural video world (see docs/shapes-world.md).

A scene is a background and one or two flat-coloured objects, each with a shape,
a size and a motion. Everything a clip shows comes from one `SceneRecord`, so
captions (captions.py), renders and the evaluator agree exactly:

    record = sample_scene(rng)                  # seeded, from the training split
    video = render_scene(record, 64, 64, 17)    # np.uint8 [T, H, W, 3]
    parse_prompt("a red circle moving right")   # SceneSpec: what a prompt fixes
    render("a red circle moving right on a black background")   # from a prompt

Positions and speeds are in canvas fractions (x across the width, y down the
height), so a scene looks the same at any resolution and aspect ratio.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import random
import re
from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------- the world's constants
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 130, 30),
    "cyan": (40, 200, 210),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.20, "large": 0.32}  # of min(height, width)
TRANSLATIONS: dict[str, tuple[float, float]] = {  # unit direction (dx, dy); y points down
    "moving left": (-1.0, 0.0),
    "moving right": (1.0, 0.0),
    "moving up": (0.0, -1.0),
    "moving down": (0.0, 1.0),
}
MOTIONS: tuple[str, ...] = (*TRANSLATIONS, "bouncing", "standing still", "growing", "shrinking")

FPS = 8
SPEED = 0.25  # canvas fractions per second, translations
BOUNCE_SPEED = 0.35  # canvas fractions per second along each axis
GROWTH = 1.8  # size factor of growing (1/GROWTH for shrinking) ...
GROWTH_SECONDS = 2.0  # ... reached linearly over this time, then held
REFERENCE_FRAMES = 17  # clip length the world's guarantees are stated for
MIN_SIDE, MAX_SIDE, MAX_FRAMES = 16, 512, 256
TRIANGLE_HEIGHT = math.sqrt(3) / 2  # height of an equilateral triangle of side 1


# ---------------------------------------------------------------- records
@dataclass
class ObjectRecord:
    """One object: what it is and how it moves. Positions in canvas fractions."""

    color: str
    shape: str
    size: str
    motion: str
    x: float = 0.5  # centre at t = 0 (bounding-box centre for triangles)
    y: float = 0.5
    vx: float = 0.0  # canvas fractions per second
    vy: float = 0.0


@dataclass
class SceneRecord:
    """A whole clip's ground truth: background and 1-2 objects (the second drawn on top)."""

    background: str
    objects: list[ObjectRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SceneRecord":
        return cls(data["background"], [ObjectRecord(**o) for o in data["objects"]])


# ---------------------------------------------------------------- held-out combinations
def _is_heldout(color: str, shape: str, motion: str) -> bool:
    # A hash, not an RNG: the split must never change between versions or machines.
    digest = hashlib.sha256(f"{color} {shape} {motion}".encode()).digest()
    return digest[0] % 7 == 0


ALL_COMBOS: tuple[tuple[str, str, str], ...] = tuple(itertools.product(COLORS, SHAPES, MOTIONS))
HELDOUT_COMBOS: frozenset[tuple[str, str, str]] = frozenset(c for c in ALL_COMBOS if _is_heldout(*c))
TRAIN_COMBOS: tuple[tuple[str, str, str], ...] = tuple(c for c in ALL_COMBOS if c not in HELDOUT_COMBOS)
SPLITS = ("train", "heldout", "all")


def is_heldout(obj: ObjectRecord) -> bool:
    """True when the object's colour/shape/motion combination is held out of training."""
    return (obj.color, obj.shape, obj.motion) in HELDOUT_COMBOS


# ---------------------------------------------------------------- geometry and motion
def object_side(size: str, height: int, width: int) -> float:
    """Nominal size in pixels (circle diameter, square/triangle side)."""
    return SIZES[size] * min(height, width)


def scale_at(motion: str, seconds: np.ndarray) -> np.ndarray:
    """Size factor over time: linear to GROWTH (or 1/GROWTH) in GROWTH_SECONDS, then held."""
    seconds = np.asarray(seconds, dtype=np.float64)
    if motion not in ("growing", "shrinking"):
        return np.ones_like(seconds)
    end = GROWTH if motion == "growing" else 1.0 / GROWTH
    return 1.0 + (end - 1.0) * np.clip(seconds / GROWTH_SECONDS, 0.0, 1.0)


def half_extent(shape: str, side_px: float, height: int, width: int) -> tuple[float, float]:
    """Half width and half height of the object's bounding box, in canvas fractions."""
    h = side_px * (TRIANGLE_HEIGHT if shape == "triangle" else 1.0)
    return side_px / 2 / width, h / 2 / height


def _fold(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect a free path back into [lo, hi]: elastic bounces off both walls."""
    span = hi - lo
    if span <= 0:
        return np.full_like(p, (lo + hi) / 2)
    u = np.mod(p - lo, 2 * span)
    return lo + np.where(u > span, 2 * span - u, u)


def trajectory(obj: ObjectRecord, height: int, width: int, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame centre x, y (canvas fractions) and side (pixels), each [T]."""
    seconds = np.arange(frames) / FPS
    side = object_side(obj.size, height, width) * scale_at(obj.motion, seconds)
    hx, hy = half_extent(obj.shape, float(side.max()), height, width)
    x = _fold(obj.x + obj.vx * seconds, hx, 1 - hx)
    y = _fold(obj.y + obj.vy * seconds, hy, 1 - hy)
    return x, y, side


# ---------------------------------------------------------------- sampling scenes
def _place(rng: random.Random, obj: ObjectRecord) -> None:
    """Draw start position and velocity per the spec, for a square reference canvas.

    Positions are canvas fractions, so the same draw works at every aspect ratio:
    half-extents in fractions only shrink when one side grows.
    """
    side_frac = SIZES[obj.size] * (GROWTH if obj.motion == "growing" else 1.0)
    h = side_frac / 2 + 0.02  # half extent plus a margin
    if obj.motion in TRANSLATIONS:
        dx, dy = TRANSLATIONS[obj.motion]
        travel = SPEED * (REFERENCE_FRAMES - 1) / FPS  # 0.5 canvas in 17 frames
        obj.vx, obj.vy = dx * SPEED, dy * SPEED
        lo, hi = h, 1 - h - travel  # start so that no edge is touched in 17 frames

        def along(d: float) -> float:
            p = rng.uniform(lo, hi)
            return p if d > 0 else 1 - p

        obj.x = along(dx) if dx else rng.uniform(h, 1 - h)
        obj.y = along(dy) if dy else rng.uniform(h, 1 - h)
    elif obj.motion == "bouncing":
        obj.vx = rng.choice((-1, 1)) * BOUNCE_SPEED
        obj.vy = rng.choice((-1, 1)) * BOUNCE_SPEED
        # Start 0.05-0.3 canvas from the wall it heads to along x: a bounce within ~1 s.
        gap = rng.uniform(0.05, 0.3)
        obj.x = 1 - h - gap if obj.vx > 0 else h + gap
        obj.y = rng.uniform(h, 1 - h)
    else:  # standing still, growing, shrinking: centre fixed
        obj.x, obj.y = rng.uniform(h, 1 - h), rng.uniform(h, 1 - h)


def sample_scene(rng: random.Random | int, split: str = "train", num_objects: int | None = None) -> SceneRecord:
    """Draw a scene: 1 object (70%) or 2 (30%) of different colours.

    split="train" draws only training combinations; "heldout" makes the first
    object a held-out combination (the second, if any, may be anything); "all"
    draws from every combination.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if num_objects not in (None, 1, 2):
        raise ValueError(f"num_objects must be 1 or 2, got {num_objects}")
    rng = random.Random(rng) if isinstance(rng, int) else rng
    n = num_objects or (1 if rng.random() < 0.7 else 2)
    pools = {"train": TRAIN_COMBOS, "heldout": sorted(HELDOUT_COMBOS), "all": ALL_COMBOS}
    objects: list[ObjectRecord] = []
    for i in range(n):
        pool = pools[split] if (split != "heldout" or i == 0) else pools["all"]
        used = {o.color for o in objects}
        color, shape, motion = rng.choice([c for c in pool if c[0] not in used])
        obj = ObjectRecord(color, shape, rng.choice(tuple(SIZES)), motion)
        for _ in range(50):  # keep the first object mostly in view (see _mostly_visible)
            _place(rng, obj)
            if i == 0 or _mostly_visible(objects[0], obj):
                break
        objects.append(obj)
    return SceneRecord(rng.choice(tuple(BACKGROUNDS)), objects)


def _mostly_visible(below: ObjectRecord, above: ObjectRecord, share: float = 0.6) -> bool:
    """True when `above` hides under 1 - share of `below` in every reference frame.

    The spec lets objects overlap; this keeps occlusion partial so that every
    drawn scene can be judged (and ground truth passes the evaluator).
    """
    h = w = 64
    bx, by, bs = trajectory(below, h, w, REFERENCE_FRAMES)
    ax, ay, as_ = trajectory(above, h, w, REFERENCE_FRAMES)
    for i in range(REFERENCE_FRAMES):
        mb = object_mask(below.shape, bx[i] * w, by[i] * h, bs[i], h, w)
        ma = object_mask(above.shape, ax[i] * w, ay[i] * h, as_[i], h, w)
        if (mb & ~ma).sum() < share * mb.sum():
            return False
    return True


# ---------------------------------------------------------------- rendering
def _check_canvas(height: int, width: int, frames: int) -> None:
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or not MIN_SIDE <= v <= MAX_SIDE:
            raise ValueError(f"{name}={v!r}: Shapes World canvases are {MIN_SIDE} to {MAX_SIDE} pixels")
    if not isinstance(frames, (int, np.integer)) or not 1 <= frames <= MAX_FRAMES:
        raise ValueError(f"frames={frames!r}: Shapes World clips have 1 to {MAX_FRAMES} frames")


def object_mask(shape: str, cx: float, cy: float, side: float, height: int, width: int) -> np.ndarray:
    """Boolean [H, W] mask of one object with centre (cx, cy) in pixels, sampled at pixel centres."""
    ys = np.arange(height)[:, None] + 0.5
    xs = np.arange(width)[None, :] + 0.5
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= (side / 2) ** 2
    if shape == "square":
        return (np.abs(xs - cx) <= side / 2) & (np.abs(ys - cy) <= side / 2)
    if shape == "triangle":  # pointing up, bounding box centred on (cx, cy)
        h = side * TRIANGLE_HEIGHT
        top, bottom = cy - h / 2, cy + h / 2
        half_width = (ys - top) / h * side / 2  # widens linearly from the apex
        return (ys >= top) & (ys <= bottom) & (np.abs(xs - cx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_scene(record: SceneRecord, height: int = 64, width: int = 64, frames: int = 17) -> np.ndarray:
    """Render a record to np.uint8 [T, H, W, 3] (8 fps)."""
    _check_canvas(height, width, frames)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    video[:] = BACKGROUNDS[record.background]
    for obj in record.objects:  # later objects are drawn on top
        xs, ys, sides = trajectory(obj, height, width, frames)
        color = np.array(COLORS[obj.color], dtype=np.uint8)
        for i in range(frames):
            video[i][object_mask(obj.shape, xs[i] * width, ys[i] * height, sides[i], height, width)] = color
    return video


# ---------------------------------------------------------------- prompts
@dataclass
class ObjectSpec:
    """What a prompt says about one object; `size=None` when the prompt leaves it open."""

    color: str
    shape: str
    motion: str
    size: str | None = None


@dataclass
class SceneSpec:
    """What a prompt says about a scene; `background=None` when left open."""

    objects: list[ObjectSpec] = field(default_factory=list)
    background: str | None = None


_MOTION_WORDS = {m.split()[0]: m for m in MOTIONS}  # "moving" -> needs a direction; others are one word
_DIRECTIONS = ("left", "right", "up", "down")


def prompt_words(prompt: str) -> list[str]:
    """The lower-case words of a prompt, as the parser and the caption vocabulary see them."""
    return re.findall(r"[a-z]+", prompt.lower())


def parse_prompt(prompt: str) -> SceneSpec:
    """Parse the plain caption form into a `SceneSpec`.

    Grammar: OBJECT ["and" OBJECT] ["on" ["a"] BACKGROUND "background"], where
    OBJECT = ["a"|"an"] [SIZE] COLOUR SHAPE MOTION. Raises ValueError naming the
    first word that does not fit.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    words, i = prompt_words(prompt), 0

    def fail(expected: str) -> ValueError:
        word = words[i] if i < len(words) else "<end of prompt>"
        return ValueError(f"did not understand {word!r} in prompt {prompt!r}: expected {expected}")

    def take(options, expected: str) -> str:
        nonlocal i
        if i >= len(words) or words[i] not in options:
            raise fail(expected)
        i += 1
        return words[i - 1]

    def optional(options) -> str | None:
        nonlocal i
        if i < len(words) and words[i] in options:
            i += 1
            return words[i - 1]
        return None

    spec = SceneSpec()
    while True:
        optional(("a", "an"))
        size = optional(SIZES)
        color = take(COLORS, f"a colour ({', '.join(COLORS)})")
        shape = take(SHAPES, f"a shape ({', '.join(SHAPES)})")
        head = take(_MOTION_WORDS, "a motion (" + ", ".join(MOTIONS) + ")")
        motion = _MOTION_WORDS[head]
        if head == "moving":
            motion = f"moving {take(_DIRECTIONS, 'a direction after moving (left, right, up, down)')}"
        elif head == "standing":
            take(("still",), "'still' after 'standing'")
        spec.objects.append(ObjectSpec(color, shape, motion, size))
        if optional(("and",)) is None:
            break
        if len(spec.objects) == 2:
            raise fail("at most two objects")
    if optional(("on",)):
        optional(("a",))
        spec.background = take(BACKGROUNDS, f"a background ({', '.join(BACKGROUNDS)})")
        take(("background",), "'background'")
    if i < len(words):
        raise fail("the end of the prompt")
    if len(spec.objects) == 2 and spec.objects[0].color == spec.objects[1].color:
        raise ValueError(f"the two objects in {prompt!r} must have different colours")
    return spec


def render(prompt: str, height: int = 64, width: int = 64, frames: int = 17, seed: int = 0) -> np.ndarray:
    """Render a plain-form prompt, e.g. "a red circle moving right on a black background".

    Parts the prompt leaves open (size, background, start position) are drawn from `seed`.
    Returns np.uint8 [frames, height, width, 3]. A prompt outside the world's grammar
    raises ValueError naming the word that was not understood.
    """
    _check_canvas(height, width, frames)
    return render_scene(scene_from_prompt(prompt, seed), height, width, frames)


def scene_from_prompt(prompt: str, seed: int = 0) -> SceneRecord:
    """A full record for a prompt: the parsed parts, the rest drawn from `seed`."""
    spec = parse_prompt(prompt)
    rng = random.Random(seed)
    objects = []
    for o in spec.objects:
        obj = ObjectRecord(o.color, o.shape, o.size or rng.choice(tuple(SIZES)), o.motion)
        _place(rng, obj)
        objects.append(obj)
    return SceneRecord(spec.background or rng.choice(tuple(BACKGROUNDS)), objects)
