"""Shapes World captions: three styles from one record.

    short     red circle moving right
    plain     a small red circle moving right on a black background
    detailed  A small red circle glides steadily from the left side of the frame
              toward the right over a plain black background.

`shapes.parse_prompt` reads the plain form back (size and background may be left
out) and names the first word it does not understand.
"""

from __future__ import annotations

import random
import re

from patchflow.shapes.world import (BACKGROUNDS, COLORS, MOTIONS, SHAPES, SIZES, TRAIN_COMBOS, ObjectSpec, SceneRecord,
                                    SceneSpec, prompt_words)


# ---------------------------------------------------------------- short and plain
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(color: str, shape: str, motion: str, size: str | None) -> str:
    words = " ".join(w for w in (size, color, shape, motion) if w)
    return f"{_article(words)} {words}"


def plain_caption(scene: SceneRecord | SceneSpec) -> str:
    """`a small red circle moving right [and ...] on a black background`."""
    text = " and ".join(_object_phrase(o.color, o.shape, o.motion, o.size) for o in scene.objects)
    return f"{text} on {_article(scene.background)} {scene.background} background" if scene.background else text


def translation_captions(backgrounds: tuple[str, ...] | list[str] = tuple(BACKGROUNDS),
                         objects: list[str] | None = None) -> list[str]:
    """Plain captions of one object moving left, right, up or down, one per *training* colour/shape/direction
    triple, size and background, in a fixed order; `objects` ("large red triangle", ...) keeps only those.
    Never a held-out triple (the held-out row must measure combinations no training clip showed). The
    narrow clips that teach direction (benchmarks/narrow_mix_cache.py) are rendered from these."""
    unknown = sorted(set(backgrounds) - set(BACKGROUNDS))
    if unknown:
        raise ValueError(f"unknown backgrounds {unknown}; the world has {list(BACKGROUNDS)}")
    out = [plain_caption(SceneSpec([ObjectSpec(color, shape, motion, size)], background))
           for color, shape, motion in TRAIN_COMBOS if motion.startswith("moving ")
           for size in SIZES for background in backgrounds
           if objects is None or f"{size} {color} {shape}" in objects]
    missing = [o for o in objects or [] if not any(f" {o} moving " in f" {c}" for c in out)]
    if missing:
        raise ValueError(f"objects {missing}: not 'SIZE COLOUR SHAPE' of the world, or no training direction")
    return out


def short_caption(scene: SceneRecord | SceneSpec) -> str:
    """`red circle moving right [and blue square standing still]`."""
    return " and ".join(f"{o.color} {o.shape} {o.motion}" for o in scene.objects)


# ---------------------------------------------------------------- detailed
# Several phrasings per motion; {o} is the object noun phrase ("a small red circle").
_MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "moving left": ("{o} glides steadily from the right side of the frame toward the left",
                    "{o} travels at a constant pace to the left",
                    "{o} drifts smoothly leftward across the frame"),
    "moving right": ("{o} glides steadily from the left side of the frame toward the right",
                     "{o} travels at a constant pace to the right",
                     "{o} drifts smoothly rightward across the frame"),
    "moving up": ("{o} rises steadily from the lower part of the frame toward the top",
                  "{o} travels at a constant pace upward",
                  "{o} drifts smoothly up through the frame"),
    "moving down": ("{o} sinks steadily from the upper part of the frame toward the bottom",
                    "{o} travels at a constant pace downward",
                    "{o} drifts smoothly down through the frame"),
    "bouncing": ("{o} bounces diagonally around the frame, rebounding off the edges",
                 "{o} ricochets off the walls of the frame as it moves diagonally",
                 "{o} zigzags across the frame, bouncing whenever it meets an edge"),
    "standing still": ("{o} stays perfectly still in one place",
                       "{o} rests motionless without moving at all",
                       "{o} remains fixed at the same spot the whole time"),
    "growing": ("{o} slowly grows larger while its centre stays in place",
                "{o} expands steadily, getting bigger over time",
                "{o} swells in size without changing its position"),
    "shrinking": ("{o} slowly shrinks while its centre stays in place",
                  "{o} contracts steadily, getting smaller over time",
                  "{o} dwindles in size without changing its position"),
}
_BACKGROUND_PHRASES = ("over a plain {b} background", "against a flat {b} backdrop",
                       "on a uniform {b} background", "in front of a solid {b} background")
_OPENERS = ("", "In this short clip, ", "The video shows how ", "Throughout the scene, ")
_CLOSERS = (" The shape has one flat colour and sharp edges.", " Nothing else appears in the frame.",
            " The camera does not move at all.")


def detailed_caption(scene: SceneRecord, rng: random.Random | int = 0) -> str:
    """A 15-35 word sentence stating the record's facts in varied words."""
    rng = random.Random(rng) if isinstance(rng, int) else rng
    best = ""
    for _ in range(32):  # a few draws: two-object sentences can run past 35 words
        sentence = _draw_detailed(scene, rng)
        if 15 <= len(sentence.split()) <= 35:
            return sentence
        if not best or len(sentence.split()) < len(best.split()):
            best = sentence
    return best


def _draw_detailed(scene: SceneRecord, rng: random.Random) -> str:
    parts = [rng.choice(_MOTION_PHRASES[o.motion]).format(o=_object_phrase(o.color, o.shape, "", o.size))
             for o in scene.objects]
    body = ", while ".join(parts)
    sentence = f"{rng.choice(_OPENERS)}{body} {rng.choice(_BACKGROUND_PHRASES).format(b=scene.background)}."
    if len(parts) == 1:  # one-object sentences get a closing remark to reach 15+ words
        sentence += rng.choice(_CLOSERS)
    return sentence[0].upper() + sentence[1:]


def caption_vocabulary() -> frozenset[str]:
    """Every word a caption of any style can use: the words a Shapes World model was trained on."""
    phrases = [*(p for ps in _MOTION_PHRASES.values() for p in ps), *_BACKGROUND_PHRASES, *_OPENERS, *_CLOSERS,
               *COLORS, *SHAPES, *SIZES, *MOTIONS, *BACKGROUNDS, "a an and on background"]
    return frozenset(w for p in phrases for w in prompt_words(re.sub(r"\{\w\}", " ", p)))  # without {o}, {b}


def captions(scene: SceneRecord, seed: int = 0) -> dict[str, str]:
    """All three caption styles of a record (`detailed` varies with `seed`)."""
    return {"short": short_caption(scene), "plain": plain_caption(scene),
            "detailed": detailed_caption(scene, seed)}
