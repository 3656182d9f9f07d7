"""Judging a trained Shapes World model: one row per capability, each scored by the evaluator.

    pipe = VideoPipeline.from_pretrained()          # or a run folder
    results = evaluate_model(pipe, count=100)       # row -> {"count", "all", "background", ..., "seconds"}
    print(format_table(results))                    # markdown, for MODEL_CARD.md / benchmarks/RESULTS.md
    patchflow eval model --count 100 --json         # the same from the command line

Every video is 64x64 with 17 frames (2 s at 8 fps: the span for which the world guarantees that
translations touch no edge, and on which the evaluator judges motion), made with the pipeline's
default sampler settings unless `steps` / `guidance` say otherwise, and judged by
`evaluate.evaluate_video` against the item's ground truth. Each row's set is fixed by `seed`: item i
of a row draws everything from random.Random(f"{row}:{seed}:{i}"), so the first k items of a count
of 100 are the items of a count of k (a learning curve on small counts sees a subset of the full set).

Rows (`all` = the share fully correct, plus per-attribute shares from `evaluate.summarize`):
    heldout          single-object scenes of the 30 held-out colour/shape/motion triples, cycled in
                     a seeded order (so every triple appears before any repeats), size and background
                     drawn; prompt = the plain caption
    train            the same over the 138 training triples
    two_objects      two-object scenes of the training split (`sample_scene(..., "train", 2)`)
    paraphrase       PARAPHRASES: free-form prompts the training captions never use, all of training
                     triples (so the row compares with `train`), cycled in a seeded order, each
                     generated through the pipeline's prompt expansion and judged against its plain
                     caption (size and background are judged only when the paraphrase names them)
    image_to_video   a rendered training scene's frame 0 as image=; judged on all 17 frames
    extend_forward   its first 9 frames as video=, extend="forward"
    extend_backward  its last 8 frames as video=, extend="backward"
    connect          its first 5 frames as video= and its last 4 as end_video=
    loop             loop=True on still training scenes (see below)

Given frame counts cover whole latents of the causal VAE (ft = 4: frame 0 alone, then groups of 4):
a clip at the start keeps 1 + 4k frames, one at the end 4k (tasks.py). Of the 5 latent frames, the
1, 9, 8 and 5 + 4 given frames leave 4, 2, 3 and 2 to generate. Conditioning rows use single-object training scenes, so their
`all` compares with `train`; the given frames make motion easier to get right, which is the point:
the row asks whether the model continues what it is shown. They also report `given_psnr`, the mean
PSNR between the given frames and the same output frames (the VAE round trip of the given latents),
`kept`, the share with given_psnr >= KEEP_PSNR (28 dB), and `all_kept`, the share fully correct and kept.

The loop row. A seamless loop plays its last frame, then its first: the last frame should be the frame
that comes just before frame 0. For a moving object that frame is one step of motion away from frame 0
(2 pixels at 64x64), so comparing the last frame with the first would fail a perfect loop (one step of
ground truth measures 23-27 dB, under the 28 dB bar), and the true "frame -1" of a generated video is
not known. Nor can those prompts loop in 17 frames: a translation cannot move right and come back, and
growing, shrinking or a bounce cannot return to the start in the 4 frames the loop pass regenerates,
so judging them on motion would score the impossible.
The row therefore uses the still prompts of the training split (20 triples: every colour and shape,
"standing still"), where frame -1 equals frame 0: `loop_psnr` is the PSNR between the last and the
first frame, `kept` the share with loop_psnr >= 28 dB (seamless), and every attribute is judged as
usual (the loop pass must not make the object drift, fade or change shape). It measures whether the
loop pass keeps a video intact and closes it, not whether the model can bend a motion back.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from patchflow.shapes.captions import plain_caption
from patchflow.shapes.world import (
    BACKGROUNDS, HELDOUT_COMBOS, SIZES, TRAIN_COMBOS, ObjectSpec, SceneRecord, SceneSpec, parse_prompt, render_scene,
    sample_scene, scene_from_prompt,
)
from patchflow.shapes.evaluate import ATTRIBUTES, EvalResult, evaluate_video, summarize

ROWS = ("heldout", "train", "two_objects", "paraphrase", "image_to_video", "extend_forward",
        "extend_backward", "connect", "loop")
FRAMES, SIZE, FT = 17, 64, 4  # every video: 64x64, 17 frames; the given counts below are for ft = 4
GIVEN = {"image_to_video": (1, 0), "extend_forward": (9, 0), "extend_backward": (0, 8), "connect": (5, 4)}  # (head, tail)
KEEP_PSNR = 28.0  # dB: given frames (or a loop's seam) at least this close count as kept
PSNR_CAP = 100.0  # dB: identical frames (PSNR inf) count as this, so means stay finite
SHEET_VIDEOS = 4  # videos per contact sheet (samples, failures)

# (paraphrase, the plain caption it means). None of them is a training caption (short, plain or
# detailed); every one is a training triple; `prompts.expand_prompt` maps each to its plain caption
# (tests/test_model_eval.py checks all three).
PARAPHRASES: tuple[tuple[str, str], ...] = (
    ("a red ball sliding to the left over black", "a red circle moving left on a black background"),
    ("blue ball, not moving, white backdrop", "a blue circle standing still on a white background"),
    ("tiny crimson disc drifting upward on a dark backdrop", "a small red circle moving up on a black background"),
    ("a big golden box heading left against a grey backdrop", "a large yellow square moving left on a gray background"),
    ("emerald pyramid sinking toward the bottom", "a green triangle moving down"),
    ("a violet box bouncing around on a pale background", "a purple square bouncing on a white background"),
    ("an amber cube getting bigger over a dark background", "an orange square growing on a black background"),
    ("teal ball shrinking, black bg", "a cyan circle shrinking on a black background"),
    ("a little scarlet tile rising against a silver backdrop", "a small red square moving up on a gray background"),
    ("huge cobalt dot that stays still on a light background",
     "a large blue circle standing still on a white background"),
    ("lime block travelling from the left to the right", "a green square moving right"),
    ("a turquoise sphere falling on a neutral backdrop", "a cyan circle moving down on a gray background"),
    ("lemon triangle expanding in front of a pitch black background",
     "a yellow triangle growing on a black background"),
    ("tangerine wedge bouncing off the walls", "an orange triangle bouncing"),
    ("a magenta square heading to the right over a white backdrop",
     "a purple square moving right on a white background"),
    ("sapphire pyramid, motionless, on grey", "a blue triangle standing still on a gray background"),
    ("mini ruby orb dwindling on a bright background", "a small red circle shrinking on a white background"),
    ("an enormous aqua box drifts leftward", "a large cyan square moving left"),
    ("a gold wedge climbs through the frame over black", "a yellow triangle moving up on a black background"),
    ("lavender block gliding downward against a dark backdrop",
     "a purple square moving down on a black background"),
    ("green wedge moving from the right side of the screen to the left", "a green triangle moving left"),
    ("a cherry cube static in one place on white", "a red square standing still on a white background"),
    ("navy box swelling slowly against a gray backdrop", "a blue square growing on a gray background"),
    ("a cherry pyramid zigzagging across the screen on black", "a red triangle bouncing on a black background"),
    ("a small amber triangle descends on a light grey background",
     "a small orange triangle moving down on a gray background"),
    ("big emerald sphere contracting over a plain white backdrop",
     "a large green circle shrinking on a white background"),
    ("a yellow block floats to the left", "a yellow square moving left"),
    ("an azure wedge goes up, pale backdrop", "a blue triangle moving up on a white background"),
)


@dataclass
class Item:
    """One video to make and judge."""

    prompt: str                     # what the pipeline is given (it expands the prompt itself)
    target: SceneRecord | str       # what the video is judged against: a record or a plain caption
    seed: int                       # the sampler's seed for this video
    clip: np.ndarray | None = None  # ground truth uint8 [17, 64, 64, 3] whose frames are given (conditioning rows)


# ---------------------------------------------------------------- the fixed evaluation set
def _cycled(row: str, seed: int, pool: list, i: int) -> Any:
    """Item i's entry of `pool` in a seeded order, cycled: every entry before any repeats."""
    order = random.Random(f"{row}:{seed}").sample(pool, len(pool))
    return order[i % len(order)]


def _one_object(combo: tuple[str, str, str], rng: random.Random) -> SceneRecord:
    """A single-object record of a (colour, shape, motion) triple; size, background and placement from rng."""
    spec = SceneSpec([ObjectSpec(*combo, rng.choice(tuple(SIZES)))], rng.choice(tuple(BACKGROUNDS)))
    return scene_from_prompt(plain_caption(spec), seed=rng.randrange(2**31))


def build_items(row: str, count: int, seed: int = 0) -> list[Item]:
    """The row's first `count` items for `seed` (module docstring); the same arguments give the same items."""
    if row not in ROWS:
        raise ValueError(f"unknown row {row!r}; rows are {list(ROWS)}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    pools = {"heldout": sorted(HELDOUT_COMBOS), "loop": [c for c in TRAIN_COMBOS if c[2] == "standing still"]}
    items = []
    for i in range(count):
        rng = random.Random(f"{row}:{seed}:{i}")
        if row == "paraphrase":
            prompt, plain = _cycled(row, seed, list(PARAPHRASES), i)
            items.append(Item(prompt, plain, rng.randrange(2**31)))
            continue
        if row == "two_objects":
            record = sample_scene(rng, "train", num_objects=2)
        else:
            record = _one_object(_cycled(row, seed, pools.get(row, list(TRAIN_COMBOS)), i), rng)
        clip = render_scene(record, SIZE, SIZE, FRAMES) if row in GIVEN else None
        items.append(Item(plain_caption(record), record, rng.randrange(2**31), clip))
    return items


def _inputs(row: str, items: list[Item]) -> dict:
    """The pipeline arguments of a row's task, one input per prompt of the batch."""
    if row == "loop":
        return {"loop": True}
    if row not in GIVEN:
        return {}
    head, tail = GIVEN[row]
    clips = [it.clip for it in items]
    if row == "image_to_video":
        return {"image": [c[0] for c in clips]}  # (H, W, 3) each
    if row == "connect":
        return {"video": [c[:head] for c in clips], "end_video": [c[FRAMES - tail:] for c in clips]}
    if row == "extend_forward":
        return {"video": [c[:head] for c in clips], "extend": "forward"}
    return {"video": [c[FRAMES - tail:] for c in clips], "extend": "backward"}


def given_frames(row: str) -> np.ndarray:
    """Indices of the frames a conditioning row gives (empty for the others)."""
    head, tail = GIVEN.get(row, (0, 0))
    return np.r_[0:head, FRAMES - tail:FRAMES]


# ---------------------------------------------------------------- running
def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from patchflow.evaluation.metrics import psnr

    return min(psnr(a, b), PSNR_CAP)


def _check_pipeline(pipe: Any) -> None:
    vae = getattr(pipe, "vae", None)  # a stand-in pipeline (tests) may have none
    if vae is not None and vae.config.ft != FT:
        raise ValueError(f"the model's VAE groups ft={vae.config.ft} frames per latent; model_eval's given "
                         f"frame counts {GIVEN} are whole latents for ft={FT}")


def evaluate_row(pipe: Any, row: str, count: int = 100, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, batch_size: int = 8, progress: bool = True,
                 samples: str | Path | None = None, frames: int = FRAMES) -> dict[str, float]:
    """Make and judge one row's `count` videos (batches of `batch_size` prompts per pipeline call).

    frames: the length of rows without given frames (1: images, judged on background, presence and
    shape only, as the evaluator does for single frames); the conditioning rows are always FRAMES long.

    Returns {"count", "all", per-attribute shares, "seconds"}, plus "given_psnr" (conditioning rows) or
    "loop_psnr" (loop) with "kept" and "all_kept", and "by_object": {"small triangle": [passed, videos],
    ...} over the row's one-object prompts (which objects a model draws wrong). samples: a folder for
    contact sheets ROW.png (the first videos) and ROW-failures.png (the first failures), or None.
    """
    _check_pipeline(pipe)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    items = build_items(row, count, seed)
    start = time.perf_counter()
    results: list[EvalResult] = []
    by_object: dict[str, list[int]] = {}  # "small triangle" -> [passed, videos], one-object prompts
    psnrs: list[float] = []
    shown: list[tuple[np.ndarray, str]] = []
    failed: list[tuple[np.ndarray, str]] = []
    idx = given_frames(row)
    if frames != FRAMES and (row in GIVEN or row == "loop"):
        raise ValueError(f"row {row!r} is made of {FRAMES}-frame clips; frames={frames} applies to text-only rows")
    with tqdm(total=count, desc=row, unit="video", disable=not progress) as bar:
        for b in range(0, count, batch_size):
            batch = items[b:b + batch_size]
            videos = pipe([it.prompt for it in batch], num_frames=frames, height=SIZE, width=SIZE,
                          num_inference_steps=steps, guidance_scale=guidance, seed=[it.seed for it in batch],
                          progress=False, **_inputs(row, batch))  # (B, T, H, W, 3) uint8
            for it, video in zip(batch, np.asarray(videos)):
                scene = parse_prompt(it.target) if isinstance(it.target, str) else it.target  # parsed once
                result = evaluate_video(video, scene)
                results.append(result)
                if len(scene.objects) == 1:
                    obj = scene.objects[0]
                    tally = by_object.setdefault(" ".join(w for w in (obj.size, obj.shape) if w), [0, 0])
                    tally[0] += result.passed
                    tally[1] += 1
                bad, note = [k for k, v in result.checks.items() if v is False], ""
                if row in GIVEN or row == "loop":  # given frames vs the output's, or the loop's seam
                    psnrs.append(_psnr(it.clip[idx], video[idx]) if row in GIVEN else _psnr(video[-1], video[0]))
                    note = f" | {psnrs[-1]:.1f} dB"
                    bad += ["kept"] if psnrs[-1] < KEEP_PSNR else []
                if len(shown) < SHEET_VIDEOS:
                    shown.append((video, it.prompt + note))
                if bad and len(failed) < SHEET_VIDEOS:
                    failed.append((video, f"{it.prompt}{note} | failed: {', '.join(bad)}"))
            bar.update(len(batch))
    out: dict[str, Any] = {**summarize(results), "count": len(results), "by_object": dict(sorted(by_object.items()))}
    if psnrs:
        kept = np.array(psnrs) >= KEEP_PSNR
        out["loop_psnr" if row == "loop" else "given_psnr"] = float(np.mean(psnrs))
        out["kept"] = float(kept.mean())
        out["all_kept"] = float(np.mean([r.passed and k for r, k in zip(results, kept)]))
    out["seconds"] = time.perf_counter() - start
    if samples is not None:
        from patchflow.data.grid import contact_sheet

        folder = Path(samples)
        folder.mkdir(parents=True, exist_ok=True)
        for name, chosen in ((row, shown), (f"{row}-failures", failed)):
            if chosen:
                contact_sheet([v for v, _ in chosen], [c for _, c in chosen], folder / f"{name}.png")
    return out


def evaluate_model(pipe: Any, rows: tuple[str, ...] | list[str] = ROWS, count: int = 100, seed: int = 0,
                   steps: int | None = None, guidance: float | None = None, batch_size: int = 8,
                   progress: bool = True, samples: str | Path | None = None,
                   frames: int = FRAMES) -> dict[str, dict[str, float]]:
    """Every row of `rows` (module docstring): row -> {"count", "all", per-attribute shares, ..., "seconds"}.

    pipe: a VideoPipeline (or anything called like one). steps / guidance: None = the pipeline's defaults.
    frames: as `evaluate_row` (1 judges a text-to-image model; text-only rows then).
    """
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise ValueError(f"unknown rows {unknown}; rows are {list(ROWS)}")
    return {row: evaluate_row(pipe, row, count, seed, steps, guidance, batch_size, progress, samples, frames)
            for row in rows}


# ---------------------------------------------------------------- reporting
def format_by_object(results: dict[str, dict[str, Any]]) -> str:
    """One line: every row's one-object prompts pooled, the share fully correct per object
    ("small triangle 9% (1/11)"), worst first."""
    pooled: dict[str, list[int]] = {}
    for r in results.values():
        for name, (passed, videos) in r.get("by_object", {}).items():
            tally = pooled.setdefault(name, [0, 0])
            tally[0] += passed
            tally[1] += videos
    worst_first = sorted(pooled.items(), key=lambda kv: kv[1][0] / kv[1][1])
    parts = [f"{name} {100 * p / n:.0f}% ({p}/{n})" for name, (p, n) in worst_first]
    return "fully correct by object (one-object prompts): " + (", ".join(parts) if parts else "none")


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table of `evaluate_model`'s results (shares in %, PSNR in dB; - = not measured)."""
    header = ["row", "videos", "all", *ATTRIBUTES, "PSNR (dB)", "kept", "all & kept", "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, r in results.items():
        def share(key: str) -> str:
            return f"{100 * r[key]:.1f}%" if key in r else "-"
        psnr = r.get("given_psnr", r.get("loop_psnr"))
        cells = [row, str(int(r["count"])), share("all"), *(share(a) for a in ATTRIBUTES),
                 "-" if psnr is None else f"{psnr:.1f}", share("kept"), share("all_kept"), f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
