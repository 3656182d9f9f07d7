"""The Shapes World (../shared/specs/shapes-world.md): records, renderer, captions, prompt grammar,
the evaluator that judges a video against its prompt, and the evaluation of a model.

The rest of patchflow reaches a world through `World`, the four things a world provides: read a
user's prompt into its caption form, name the words it cannot place, judge a video against a
prompt, and (for training, `data.attribute_dropout`) leave one attribute out of a caption. A
saved model names its world (model_index.json "world"); `get_world` turns the name into the
`World`, and a model of no world (real footage) takes prompts as written. Another world is added
by registering its `World` in `WORLDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class World:
    name: str
    expand_prompt: Callable[[str], str]        # a user's prompt -> the caption form it was trained on
    unknown_words: Callable[[str], list[str]]  # the prompt's words the world cannot place, in order
    judge: Callable[[Any, str], Any]           # (uint8 video [T, H, W, 3], prompt) -> a result with .passed
    drop_attribute: Callable[[str, Any], str]  # (caption, random.Random) -> the caption with one attribute fewer


def _shapes() -> World:
    from patchflow.shapes.evaluate import evaluate_video
    from patchflow.shapes.prompts import drop_attribute, expand_prompt, unknown_words

    return World("shapes", expand_prompt, unknown_words, evaluate_video, drop_attribute)


WORLDS: dict[str, Callable[[], World]] = {"shapes": _shapes}  # name -> the world (built when asked for)


def get_world(name: str | None) -> World | None:
    """The world a model names (None: no world, prompts are taken as written)."""
    if name is None:
        return None
    if name not in WORLDS:
        raise ValueError(f"world must be one of {sorted(WORLDS)} or None (no world), got {name!r}")
    return WORLDS[name]()
