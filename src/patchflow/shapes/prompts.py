"""The Shapes World's prompt grammar: what a user may say and what the world can place.

`expand_prompt` rewrites a short or paraphrased prompt into the plain caption form the model was
trained on (`"a tiny crimson ball heading left on a dark background"` -> `"a small red circle
moving left on a black background"`), using the world's vocabulary (world.py); a prompt it cannot
read completely is returned unchanged. `unknown_words` names the words that kept it from being
read (`"a dragon flying over a city"` -> dragon, flying, city), so that users of a Shapes World
model are told, not left guessing.
"""

from __future__ import annotations

import dataclasses
import random
import re

from patchflow.shapes.captions import caption_vocabulary, plain_caption
from patchflow.shapes.world import BACKGROUNDS, COLORS, MOTIONS, SHAPES, SIZES, ObjectSpec, SceneSpec, parse_prompt

DEFAULT_MOTION = "standing still"  # a shape named without a motion word is taken to be still


# ---------------------------------------------------------------- rule-based expansion
# Words that map to the world's vocabulary; canonical names map to themselves.
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{f"{s}s": s for s in SHAPES},
                **dict.fromkeys(("ball", "balls", "disc", "discs", "disk", "disks", "dot", "dots", "orb",
                                 "orbs", "sphere", "spheres", "blob"), "circle"),
                **dict.fromkeys(("box", "boxes", "cube", "cubes", "block", "blocks", "tile", "tiles"), "square"),
                **dict.fromkeys(("pyramid", "pyramids", "wedge"), "triangle")}
_COLOR_WORDS = {**{c: c for c in COLORS},
                **dict.fromkeys(("crimson", "scarlet", "ruby", "cherry"), "red"),
                **dict.fromkeys(("emerald", "lime"), "green"),
                **dict.fromkeys(("azure", "navy", "cobalt", "sapphire"), "blue"),
                **dict.fromkeys(("gold", "golden", "lemon"), "yellow"),
                **dict.fromkeys(("violet", "magenta", "lilac", "lavender", "indigo"), "purple"),
                **dict.fromkeys(("amber", "tangerine"), "orange"),
                **dict.fromkeys(("teal", "turquoise", "aqua"), "cyan")}
_SIZE_WORDS = {**{s: s for s in SIZES}, **dict.fromkeys(("tiny", "little", "mini", "smallish"), "small"),
               **dict.fromkeys(("big", "huge", "giant", "bigger", "larger", "enormous"), "large")}
_BACKGROUND_WORDS = {**{b: b for b in BACKGROUNDS}, "grey": "gray", "silver": "gray", "neutral": "gray",
                     **dict.fromkeys(("dark", "darker", "night", "blackish"), "black"),
                     **dict.fromkeys(("light", "bright", "pale", "lighter"), "white")}
_CONNECTORS = {"and", "with", "plus", "while", "alongside", "beside", "whereas", "meanwhile", "also", ",", ";", "&"}
_FILLER = set("""a an the one single this that there is are it its which who whose has have we you see can
    object objects shape shapes thing figure item colored coloured shaded shade light dark bright pale deep vivid
    slowly quickly steadily smoothly gently fast rapidly constantly continuously very perfectly softly evenly
    across through along around over toward towards within inside of in on at by from all time whole
    frame screen scene video clip picture view image canvas plain flat solid simple empty uniform
    sitting sits staying stays remaining remains keeps kept being just only it's there's""".split())

_DIR = r"(left|right|up|down|top|bottom|upward|downward|upwards|downwards|leftward|rightward|leftwards|rightwards)"
_DIR_CANON = {"top": "up", "bottom": "down", "upward": "up", "upwards": "up", "downward": "down",
              "downwards": "down", "leftward": "left", "leftwards": "left", "rightward": "right",
              "rightwards": "right"}
_VERB = (r"(?:moving|moves|move|going|goes|go|heading|heads|head|travell?ing|travels|drifting|drifts|sliding|"
         r"slides|gliding|glides|floating|floats|rolling|rolls|flying|flies|sailing|sails|shifting|shifts|"
         r"scrolling|scrolls|running|runs|zooming|zooms|cruising|cruises)")
_SIDE = r"(?:the\s+)?(left|right|top|bottom|upper|lower)(?:\s+(?:side|part|edge|end))?(?:\s+of\s+the\s+(?:frame|screen))?"
_OPPOSITE = {"left": "right", "right": "left", "top": "down", "upper": "down", "bottom": "up", "lower": "up"}
# (pattern, replacement), applied in order; motions become one token ("moving_left") so objects
# can be split on connectors afterwards. Longer phrases come before their parts.
_MOTION_RULES: list[tuple[str, str]] = [
    (rf"(?:{_VERB}\s+)?from\s+{_SIDE}\s+(?:to|toward|towards|into)\s+(?:the\s+)?\w+(?:\s+(?:side|part|edge))?",
     "FROM"),
    (r"(?:getting|becoming|growing|gets|becomes|grows)\s+(?:bigger|larger)|increasing\s+in\s+size|"
     r"scaling\s+up|expanding|expands|expand|enlarging|enlarges|inflating|inflates|swelling|swells|"
     r"growing|grows|grow", "growing"),
    (r"(?:getting|becoming|gets|becomes)\s+smaller|decreasing\s+in\s+size|scaling\s+down|contracting|"
     r"contracts|deflating|deflates|dwindling|dwindles|shrinking|shrinks|shrink", "shrinking"),
    (r"(?:is\s+)?(?:not\s+moving|does\s+not\s+move|doesn'?t\s+move|at\s+rest|in\s+place|in\s+one\s+place)|"
     r"(?:standing|stands|stand|staying|stays|stay|sitting|sits|holding|holds|keeping|remaining|remains)\s+still|"
     r"still|static|stationary|motionless|unmoving|frozen|idle|resting|rests|not\s+moving", "standing_still"),
    (r"(?:bouncing|bounces|bounce)\s+(?:around|about|off\s+the\s+(?:walls|edges|sides))|ricocheting|ricochets|"
     r"bouncing|bounces|bounce|bouncy|pinballing|zigzagging|zigzags", "bouncing"),
    (r"rising|rises|rise|ascending|ascends|climbing|climbs|lifting\s+off", "moving_up"),
    (r"falling|falls|fall|dropping|drops|descending|descends|sinking|sinks", "moving_down"),
    (rf"(?:{_VERB}\s+)?(?:(?:to|toward|towards|into)\s+)?(?:the\s+)?{_DIR}(?:\s+side)?", "DIR"),
]
_BACKGROUND_RULE = re.compile(
    r"(?:(?:on|over|against|upon|in\s+front\s+of)\s+)?(?:a\s+|an\s+|the\s+)?(?:(?:plain|flat|solid|simple|empty|"
    r"uniform|pitch|pure|very|deep)\s+)?(\w+)(?:\s+colou?red)?\s+(?:background|backdrop|bg|backgrounds)"
    r"|(?:on|over|against)\s+(?:a\s+|the\s+)?(black|white|gray|grey|dark|light)\s*$")


def _motion_token(match: re.Match, kind: str) -> str:
    if kind == "FROM":
        return f" moving_{_OPPOSITE[match.group(1)]} "  # from the left (to the right) -> moving right
    if kind == "DIR":
        word = match.group(1)
        return f" moving_{_DIR_CANON.get(word, word)} "
    return f" {kind} "


def _scan(prompt: str) -> tuple[list[str], list[str]]:
    """(the words naming a background, the other words) of a prompt, lower case, with each background
    phrase cut out and each motion phrase made one token ("heading to the left" -> "moving_left")."""
    text = " " + prompt.lower().replace("-", " ") + " "
    found = list(_BACKGROUND_RULE.finditer(text))
    for match in reversed(found):
        text = text[: match.start()] + " " + text[match.end():]
    for pattern, kind in _MOTION_RULES:
        text = re.sub(rf"(?<![\w_])(?:{pattern})(?![\w_])", lambda m, k=kind: _motion_token(m, k), text)
    return [m.group(1) or m.group(2) for m in found], re.findall(r"(?:[^\W\d]|')+|[,;&]", text)


def _read_scene(prompt: str) -> SceneSpec | None:
    """The scene a paraphrase describes, or None when some word does not fit Shapes World."""
    backgrounds, words = _scan(prompt)
    if len(backgrounds) > 1 or (backgrounds and backgrounds[0] not in _BACKGROUND_WORDS):
        return None  # two backgrounds, or one outside the world ("a red background")
    background = _BACKGROUND_WORDS[backgrounds[0]] if backgrounds else None
    chunks: list[list[str]] = [[]]
    for word in words:
        if word in _CONNECTORS:
            chunks.append([])
        elif word not in _FILLER:
            chunks[-1].append(word)
    motions = {m.replace(" ", "_"): m for m in MOTIONS}
    objects: list[dict[str, str]] = []
    for words in (c for c in chunks if c):
        slots: dict[str, str] = {}
        for word in words:
            for slot, table in (("size", _SIZE_WORDS), ("color", _COLOR_WORDS), ("shape", _SHAPE_WORDS),
                                ("motion", motions)):
                if word in table:
                    if slot in slots and slots[slot] != table[word]:
                        return None  # two colours (or shapes, motions) for one object
                    slots[slot] = table[word]
                    break
            else:
                return None  # a word outside the world's vocabulary
        if "color" not in slots and "shape" not in slots and objects:  # "a red ball, still": same object
            if any(objects[-1].get(k, v) != v for k, v in slots.items()):
                return None
            objects[-1].update(slots)
        elif "color" in slots and "shape" in slots:
            objects.append(slots)
        else:
            return None
    objects = [ObjectSpec(o["color"], o["shape"], o.get("motion", DEFAULT_MOTION), o.get("size")) for o in objects]
    return SceneSpec(objects, background) if objects else None


def expand_prompt(prompt: str, defaults: dict[str, str] | None = None) -> str:
    """Rewrite a short or paraphrased Shapes World prompt into the plain caption form.

    "tiny crimson ball heading left on a dark background" -> "a small red circle moving left on a
    black background". Size and background stay unspecified unless the prompt or `defaults`
    ({"size": "small", "background": "black"}) give them. A prompt that is not fully readable as
    Shapes World (unknown words, a third object, two objects of one colour) is returned unchanged.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    defaults = defaults or {}
    unknown = set(defaults) - {"size", "background"}
    if unknown or defaults.get("size", "small") not in SIZES or defaults.get("background", "black") not in BACKGROUNDS:
        raise ValueError(f"defaults must map 'size' to one of {list(SIZES)} and 'background' to one of "
                         f"{list(BACKGROUNDS)}, got {defaults}")
    scene = _read_scene(prompt)
    if scene is None:
        return prompt
    for obj in scene.objects:
        obj.size = obj.size or defaults.get("size")
    scene.background = scene.background or defaults.get("background")
    caption = plain_caption(scene)
    try:
        parse_prompt(caption)  # the world's own grammar is the final check
    except ValueError:
        return prompt
    return caption



# ---------------------------------------------------------------- words outside the world
# Words a Shapes World model knows: those of its training captions (every style) and those the
# rules above turn into them (synonyms, motion phrases, filler).
_KNOWN_WORDS = frozenset().union(caption_vocabulary(), _FILLER, _CONNECTORS, _SIZE_WORDS, _COLOR_WORDS,
                                 _SHAPE_WORDS, _BACKGROUND_WORDS, (m.replace(" ", "_") for m in MOTIONS))


def unknown_words(prompt: str) -> list[str]:
    """The words of `prompt` that Shapes World cannot place, in order, each once.

    "a dragon flying over a city" -> ["dragon", "flying", "city"]. Known words are those of the
    world's training captions (every style) and of the paraphrases `expand_prompt` reads: colour,
    shape, size and background synonyms, motion phrases ("heading left"; a bare "flying" is not
    one) and filler ("a", "the", "over"). Words are judged one at a time: a prompt `expand_prompt`
    reads completely gives [], while combinations the world lacks ("a red ball on a red
    background", a third object) are not listed. Digits and punctuation are ignored.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    backgrounds, words = _scan(prompt)
    found = (w.strip("'") for w in words + backgrounds)  # background phrases cut out, e.g. "forest"
    return list(dict.fromkeys(w for w in found if w and w not in _KNOWN_WORDS))


# ---------------------------------------------------------------- compositional captions
def drop_attribute(caption: str, rng: random.Random) -> str:
    """The plain caption with one of its attributes left out, drawn uniformly: an object's size,
    colour or motion, or the background.

    "a small red circle moving right on a black background" -> "a small circle moving right on a
    black background" (or without "small", "moving right" or the background). Training on such
    captions (`data.attribute_dropout`) shows each word's effect apart from the words it usually
    comes with, which is what held-out colour/shape/motion combinations ask of a model. The shape
    always stays: a caption names at least what is drawn. Raises ValueError for a caption that is
    not in the plain form.
    """
    scene = parse_prompt(caption)
    choices = [(i, name) for i, o in enumerate(scene.objects) for name in ("size", "color", "motion")
               if getattr(o, name)]
    if scene.background:
        choices.append((-1, "background"))
    i, name = rng.choice(choices)
    if i < 0:
        return plain_caption(dataclasses.replace(scene, background=None))
    objects = list(scene.objects)
    objects[i] = dataclasses.replace(objects[i], **{name: None})
    return plain_caption(dataclasses.replace(scene, objects=objects))
