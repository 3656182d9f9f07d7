"""Checking and loading everything a `VideoPipeline` call takes, before any work is done.

`check_request` turns the user's arguments into a `Request`: prompts, sizes and sampler settings
checked against the model, conditioning images and videos read and resized, and the task laid out
as a pixel canvas (see tasks.py). It is a sequence of small checks (`check_text`, `check_sampler`,
`check_task`, `check_geometry`, `check_seed`) that `patchflow serve` also calls before decoding
uploads. Every rule raises an `InputError` (a ValueError) naming the argument at fault in `.field`
and the value and rule in its message; frame counts and sizes are the VAE's own rules (vae.py).
"""

from __future__ import annotations

import math
import os
import random
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from patchflow.flow import check_guidance_interval
from patchflow.data.video_processing import fit_frames, load_image, load_video
from patchflow.shapes import get_world
from patchflow.pipelines.tasks import (context_frames, covered_pixels, latent_frame_mask, loop_plan, place_conditions,
                             plan_windows)
from patchflow.models.sizes import frames_rule, nearest_valid_frames

SAMPLERS = ("euler", "heun")
OUTPUT_TYPES = ("np", "pt", "pil")


@dataclass
class Request:
    """A checked generation request; pixel arrays are uint8 [B, T, H, W, 3], masks bool [T]."""

    prompts: list[str]                 # after prompt expansion
    unknown_words: list[list[str]]     # per prompt: words the model's world cannot place ([]: none / not judged)
    negative: list[str]                # the unconditional branch of guidance ("" = none)
    num_frames: int
    height: int
    width: int
    steps: int
    guidance: float
    guidance_interval: tuple[float, float]  # guide only the steps starting at a t in [lo, hi]
    sampler: str
    shift: float | None                # None = flow.shift_for_tokens of each window
    canvas: np.ndarray                 # the given frames in place (zeros elsewhere)
    given: torch.Tensor                # which canvas frames the user gave
    source: np.ndarray | None          # the clip to edit (SDEdit), else None
    strength: float                    # SDEdit noise level; 1.0 = generate from pure noise
    direction: str                     # "forward", or "backward" when only the end is given
    loop: tuple[int, int, int] | None  # loop_plan (c, g, e), or None
    window: int                        # the trained clip length: longer videos go window by window
    windows: list[tuple[int, int]]     # the frame spans [start, stop) generated one after another
    generators: list[torch.Generator]  # one per sample (or one shared by all)
    output_type: str
    single: bool                       # prompt was a string: return one video, not a batch
    task: str                          # text-to-video, text-to-image, image-to-video, extend forward|backward,
                                       # connect or edit
    callback: Callable | None
    progress: bool
    notes: list[str]                   # what was adjusted for the caller to show (a frame count rounded)

    @property
    def total_steps(self) -> int:
        """Sampler steps of the whole request: one pass per window, one more for a loop's transition."""
        return self.steps * (len(self.windows) + (self.loop is not None))


# ---------------------------------------------------------------- errors
class InputError(ValueError):
    """A refused argument: `field` names the `VideoPipeline.__call__` argument at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type (also a TypeError, like Python's own argument errors)."""


@contextmanager
def _about(field: str):
    """Re-raise a plain ValueError (TypeError) from a shared rule (vae.py, tasks.py, video processing) as an
    InputError (InputTypeError) on `field`."""
    try:
        yield
    except InputError:
        raise
    except TypeError as e:
        raise InputTypeError(field, str(e)) from None
    except ValueError as e:
        raise InputError(field, str(e)) from None


def _prompts(prompt: Any, what: str = "prompt") -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise InputTypeError(what, f"{what} must be a string or a non-empty list of strings, got {prompt!r}")
    return list(prompts)


# ---------------------------------------------------------------- images and videos
def _base(name: str) -> str:
    return name.split("[")[0]  # "image[1]" -> "image"


def _per_sample(value: Any, batch: int, loader: Callable, name: str, is_single: Callable) -> list[np.ndarray] | None:
    """One input for every prompt, or a list with one per prompt."""
    if value is None:
        return None
    with _about(name):  # unreadable inputs (io names the file; a missing file stays FileNotFoundError)
        if is_single(value):
            return [loader(value, name)] * batch
        if len(value) != batch:
            raise ValueError(f"{name} is a list of {len(value)}, but there are {batch} prompts "
                             f"(give one or one per prompt)")
        return [loader(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _single_image(x: Any) -> bool:
    return not isinstance(x, (list, tuple))


def _single_video(x: Any) -> bool:
    if isinstance(x, (str, os.PathLike)) or isinstance(x, np.ndarray):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(hasattr(f, "convert") for f in x)  # PIL frames


# ---------------------------------------------------------------- the small checks
def check_text(*, prompt: Any, negative_prompt: Any = None) -> tuple[list[str], list[str]]:
    """(prompts, negative prompts), one negative per prompt; every prompt non-empty."""
    prompts = _prompts(prompt)
    for i, p in enumerate(prompts):
        if not p.strip():
            which = "prompt" if isinstance(prompt, str) else f"prompt {i}"
            raise InputError("prompt", f"{which} is empty; describe the video, e.g. 'a red circle moving right'")
    batch = len(prompts)
    negative = [""] * batch if negative_prompt is None else _prompts(negative_prompt, "negative_prompt")
    if len(negative) == 1:
        negative = negative * batch
    if len(negative) != batch:
        raise InputError("negative_prompt", f"negative_prompt has {len(negative)} entries for {batch} prompts "
                                            f"(give one or one per prompt)")
    return prompts, negative


def check_sampler(*, defaults: dict, num_inference_steps: Any = None, guidance_scale: Any = None,
                  sampler: Any = None, shift: Any = None, output_type: Any = "np",
                  callback_on_step_end: Any = None, guidance_interval: Any = None
                  ) -> tuple[int, float, tuple[float, float], str, float | None]:
    """(steps, guidance, guidance_interval, sampler, shift), with the model's `defaults` for the ones not given."""
    steps = defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError("num_inference_steps", f"num_inference_steps must be a positive int, got {steps!r}")
    try:
        guidance = float(defaults["guidance_scale"] if guidance_scale is None else guidance_scale)
    except (TypeError, ValueError):
        guidance = math.nan
    if not math.isfinite(guidance) or guidance < 0:
        raise InputError("guidance_scale", f"guidance_scale must be a finite number >= 0 (1 = no guidance), "
                                           f"got {guidance_scale!r}")
    with _about("guidance_interval"):
        interval = check_guidance_interval(defaults["guidance_interval"] if guidance_interval is None
                                           else guidance_interval)
    sampler = defaults["sampler"] if sampler is None else sampler
    if sampler not in SAMPLERS:
        raise InputError("sampler", f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    shift = defaults.get("shift") if shift is None else shift
    if shift is not None and not (isinstance(shift, (int, float)) and shift > 0):
        raise InputError("shift", f"shift must be a positive number (None = from the token count), got {shift!r}")
    if output_type not in OUTPUT_TYPES:
        raise InputError("output_type", f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise InputTypeError("callback_on_step_end", f"callback_on_step_end must be callable(step, t, latents), "
                                                     f"got {type(callback_on_step_end).__name__}")
    return steps, guidance, interval, sampler, shift


def check_task(*, image: Any = None, image_frame: Any = 0, video: Any = None, extend: Any = None,
               end_video: Any = None, loop: Any = False, strength: Any = None) -> str:
    """Which task the inputs ask for (only whether each is given matters here) -> its name."""
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, (int, float))
                                 or not 0.0 <= strength <= 1.0):
        raise InputError("strength", f"strength must be a number in [0, 1] (0 = keep the video, 1 = ignore it), "
                                     f"got {strength!r}")
    if extend not in (None, "forward", "backward"):
        raise InputError("extend", f"extend must be 'forward' or 'backward', got {extend!r}")
    if video is None:
        for name, present in (("extend", extend is not None), ("strength", strength is not None),
                              ("end_video", end_video is not None)):
            if present:
                raise InputError(name, f"{name}= needs video= (the clip to extend, edit or connect from)")
    elif sum([extend is not None, strength is not None, end_video is not None]) != 1:
        raise InputError("video", "with video= give exactly one of extend='forward'|'backward', end_video= "
                                  "(connect) or strength= (edit)")
    if image is not None and video is not None:
        raise InputError("image", "image= and video= cannot be combined; use video= alone to extend or edit a clip")
    if image is None and image_frame != 0:
        raise InputError("image_frame", f"image_frame={image_frame} needs image=")
    if loop not in (True, False):
        raise InputError("loop", f"loop must be True or False, got {loop!r}")
    if loop and (strength is not None or extend == "backward" or end_video is not None):
        raise InputError("loop", "loop=True works with text-to-video, image= and extend='forward', not with edits, "
                                 "backward extension or end_video")
    return ("edit" if strength is not None else "connect" if end_video is not None
            else f"extend {extend}" if extend else "image-to-video" if image is not None else "text-to-video")


def check_geometry(pipe, *, num_frames: Any, height: Any, width: Any) -> tuple[int, int, int, int]:
    """(num_frames, height, width, window) the model can take: the VAE's rules with the DiT's patch.

    window: the trained clip length (defaults["num_frames"]); longer videos go window by window.
    """
    vae, patch = pipe.vae, pipe.transformer.config.patch_size
    with _about("height"):
        height = vae.check_side(height, patch[1], "height")
    with _about("width"):
        width = vae.check_side(width, patch[2], "width")
    with _about("num_frames"):
        num_frames = vae.check_frames(num_frames, patch[0])
    window = min(pipe.defaults["num_frames"], num_frames)
    if window != num_frames:
        with _about("num_frames"):
            vae.check_frames(window, patch[0], name="the model's trained num_frames")
        if window < 1 + vae.config.ft:
            raise InputError("num_frames", f"num_frames {num_frames}: this model was trained on {window}-frame "
                                           f"clips (images), too short to extend into a longer video")
    return num_frames, height, width, window


def check_seed(*, seed: Any, generator: Any, batch: int) -> list[torch.Generator]:
    """One generator per sample, so a batch equals its prompts run one by one (none given: a random seed)."""
    if generator is not None:
        if seed is not None:
            raise InputError("seed", "give seed= or generator=, not both")
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        if len(gens) not in (1, batch) or not all(isinstance(g, torch.Generator) for g in gens):
            raise InputError("generator", f"generator must be a torch.Generator or a list of {batch} of them")
        return gens
    seeds = seed if isinstance(seed, (list, tuple)) else [random.SystemRandom().randrange(2**31)
                                                         if seed is None else seed]
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(seeds) not in (1, batch):
        raise InputError("seed", f"seed must be an int or a list of {batch} ints, got {seed!r}")
    seeds = seeds if len(seeds) == batch else [seeds[0] + b for b in range(batch)]
    return [torch.Generator().manual_seed(s) for s in seeds]


def _check_clips(*, videos, ends, num_frames: int, strength, image, image_frame) -> None:
    """The loaded clips against the result's length: something must be left to generate."""
    for name, clips in (("video", videos), ("end_video", ends)):
        if clips and len({c.shape[0] for c in clips}) > 1:
            raise InputError(name, f"the {name} clips have different lengths {[c.shape[0] for c in clips]}; "
                                   f"give equal lengths")
    if image is not None and (isinstance(image_frame, bool) or not isinstance(image_frame, int)
                              or not 0 <= image_frame < num_frames):
        raise InputError("image_frame", f"image_frame must be an int in [0, num_frames={num_frames}), "
                                        f"got {image_frame!r}")
    if strength is not None and videos[0].shape[0] < num_frames:
        raise InputError("video", f"video has {videos[0].shape[0]} frames, fewer than num_frames={num_frames} "
                                  f"to edit")
    clip_frames = (videos[0].shape[0] if videos and strength is None else 0) + (ends[0].shape[0] if ends else 0)
    if clip_frames >= num_frames:
        raise InputError("video", f"the conditioning clips have {clip_frames} frames, as many as the result "
                                  f"(num_frames={num_frames}): nothing is left to generate; pass num_frames > "
                                  f"{clip_frames}")


def _rounded_frames(pipe, num_frames: Any, notes: list[str]) -> Any:
    """An int frame count the model cannot take -> the nearest one it can, with a note; anything else as is."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        return num_frames  # None (the default) or a value check_geometry refuses by name
    ft, pt = pipe.vae.config.ft, pipe.transformer.config.patch_size[0]
    rounded = nearest_valid_frames(num_frames, ft, pt)
    if rounded != num_frames:
        notes.append(f"{num_frames} frames rounded to {rounded} (the model takes {frames_rule(ft, pt)} frames)")
    return rounded


def _check_given(given: torch.Tensor, ft: int, loop_spec: tuple[int, int, int] | None) -> None:
    """The given frames [T] against the causal VAE's latent groups and a loop's regenerated end."""
    num_frames = len(given)
    latent_given = latent_frame_mask(given, ft)
    if given.any() and latent_given.all():
        raise InputError("num_frames", f"every latent frame of the {num_frames}-frame result is given: nothing to "
                                       f"generate; pass a larger num_frames")
    partial = (given & ~covered_pixels(latent_given, ft)).nonzero().squeeze(1).tolist()
    if partial:
        warnings.warn(f"given frames {partial} share a latent frame with generated frames (the VAE encodes frame 0 "
                      f"alone, then groups of {ft}), so they are regenerated: clips at the start keep 1 + {ft}k "
                      f"frames, clips at the end {ft}k", stacklevel=4)
    if loop_spec is not None and given[num_frames - loop_spec[1]:].any():
        raise InputError("loop", f"loop=True regenerates the last {loop_spec[1]} frames; the given image/clip must "
                                 f"end before frame {num_frames - loop_spec[1]}")


# ---------------------------------------------------------------- the whole request
def check_request(pipe, *, prompt, num_frames=None, height=None, width=None, num_inference_steps=None,
                  guidance_scale=None, negative_prompt=None, seed=None, generator=None, image=None,
                  image_frame=0, video=None, extend=None, end_video=None, loop=False, strength=None,
                  sampler=None, shift=None, expand_prompt=True, output_type="np", callback_on_step_end=None,
                  progress=True, round_frames=False, guidance_interval=None) -> Request:
    """Check every argument of `VideoPipeline.__call__` (documented there) and load its inputs.

    round_frames: take an int num_frames the model cannot take as the nearest one it can, saying so
    in `Request.notes` (for command lines); otherwise such a count is refused, naming the nearest.
    """
    d, ft = pipe.defaults, pipe.vae.config.ft
    notes = []
    if round_frames:
        num_frames = _rounded_frames(pipe, num_frames, notes)
    prompts, negative = check_text(prompt=prompt, negative_prompt=negative_prompt)
    batch = len(prompts)
    steps, guidance, interval, sampler, shift = check_sampler(
        defaults=d, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, sampler=sampler,
        shift=shift, output_type=output_type, callback_on_step_end=callback_on_step_end,
        guidance_interval=guidance_interval)
    task = check_task(image=image, image_frame=image_frame, video=video, extend=extend, end_video=end_video,
                      loop=loop, strength=strength)

    # load the inputs (the io module names unreadable files)
    images = _per_sample(image, batch, load_image, "image", _single_image)
    videos = _per_sample(video, batch, load_video, "video", _single_video)
    ends = _per_sample(end_video, batch, load_video, "end_video", _single_video)

    # size: from the arguments, else a conditioning input of a valid size, else the model's defaults;
    # length: the argument, else the clip's own (an edit, rounded down to a valid count), else the default
    first = (images or videos or ends or [None])[0]
    if first is not None and height is None and width is None:
        try:
            height, width = pipe.vae.check_size(*first.shape[-3:-1], pipe.transformer.config.patch_size[1:])
        except ValueError:
            pass  # resized to the model's default size below
    if num_frames is None and strength is not None:
        valid = pipe.vae.valid_frame_counts(videos[0].shape[0], pipe.transformer.config.patch_size[0])
        num_frames = valid[-1] if valid else videos[0].shape[0]
    num_frames, height, width, window = check_geometry(
        pipe, num_frames=d["num_frames"] if num_frames is None else num_frames,
        height=d["height"] if height is None else height, width=d["width"] if width is None else width)
    _check_clips(videos=videos, ends=ends, num_frames=num_frames, strength=strength, image=image,
                 image_frame=image_frame)
    with _about("loop"):
        loop_spec = loop_plan(num_frames, d["num_frames"], ft) if loop else None  # its own window: a transition

    # the canvas of given frames (checked against the latent grouping of the causal VAE)
    images = images and fit_frames(images, height, width, "image")
    videos = videos and fit_frames(videos, height, width, "video")
    ends = ends and fit_frames(ends, height, width, "end_video")
    source = None
    if strength is not None:
        source, videos = np.stack([v[:num_frames] for v in videos]), None
    canvas, given = place_conditions(batch, num_frames, height, width, ft, images, image_frame, videos, extend, ends)
    _check_given(given, ft, loop_spec)

    gens = check_seed(seed=seed, generator=generator, batch=batch)
    world = get_world(pipe.world) if expand_prompt else None  # prompts as written are not judged
    unknown = [world.unknown_words(p) if world else [] for p in prompts]
    prompts = [world.expand_prompt(p) for p in prompts] if world else prompts
    task = "text-to-image" if task == "text-to-video" and num_frames == 1 else task
    direction = "backward" if extend == "backward" else "forward"
    overlap = context_frames(window, ft, direction) if num_frames > window else 0
    windows = plan_windows(num_frames, window, overlap, direction)
    return Request(prompts=prompts, unknown_words=unknown, negative=negative, num_frames=num_frames,
                   height=height, width=width, steps=steps, guidance=guidance, guidance_interval=interval,
                   sampler=sampler, shift=shift,
                   canvas=canvas, given=given, source=source, strength=1.0 if strength is None else float(strength),
                   direction=direction, loop=loop_spec, window=window,
                   windows=windows, generators=gens, output_type=output_type, single=isinstance(prompt, str),
                   task=task, callback=callback_on_step_end, progress=progress, notes=notes)
