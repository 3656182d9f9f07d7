"""Checking what a `patchflow serve` request asks for, before it may join the queue.

A request is a dict of fields (from JSON, or from a multipart form where every value is a string
and media are file parts). `parse_generation` checks each field against its rule and the server's
`Limits`, decodes media in memory (never a path: a request cannot name a file on this machine),
resizes them to the requested size, and lets the pipeline's own checks judge the request
(`pipeline_inputs`: the fields' rules before decoding, `VideoPipeline.check_inputs` on the whole task after).
No rule of the request is restated here: each `InputError` names its argument, which maps to the
field. Every refusal is an `ApiError` naming the field: 422 for a broken rule, 413 for a value
over a limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# The pipeline's modules (and torch) are imported where they are used, so that building the
# `patchflow serve` parser stays light.

MAX_UPLOAD_SIDE = 4096   # pixels: larger uploads are refused before decoding (a small file can unpack huge)
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 30.0
MEDIA_FIELDS = ("image", "video", "end_video")
FIELDS = ("prompt", "negative_prompt", "num_frames", "height", "width", "steps", "guidance_scale", "seed",
          "extend", "loop", "strength") + MEDIA_FIELDS


@dataclass
class Limits:
    """What one request may ask of the server (`patchflow serve --max-...`); larger requests get 413/429."""

    max_frames: int = 65           # frames per video (4 windows of the shipped model's 17)
    max_size: int = 256            # pixels, for height and width each
    max_steps: int = 50            # sampler steps
    max_upload_mb: float = 16.0    # one request body, all uploads together (base64 counts as sent)
    max_queue: int = 16            # unfinished jobs (waiting + running); more are refused with 429
    max_results: int = 32          # finished videos kept in memory; the oldest are forgotten first
    max_prompt_chars: int = 2000   # per prompt and negative prompt

    def __post_init__(self):
        for name in ("max_frames", "max_size", "max_steps", "max_queue", "max_results", "max_prompt_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb!r}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class ApiError(Exception):
    """A refused request: HTTP `status`, the `field` at fault and a message naming the rule."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def to_json(self) -> dict[str, str]:
        return {"error": self.message, "field": self.field}


@dataclass
class Generation:
    """A checked request: the pipeline's `Request` (media decoded once) and a JSON-safe summary."""

    request: Any                # pipeline_inputs.Request, for VideoPipeline.run
    summary: dict[str, Any]     # what the status endpoint shows (no media)


# ---------------------------------------------------------------- one field at a time
def _bad(field: str, message: str) -> ApiError:
    return ApiError(422, field, f"{field}: {message}")


def _text(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise _bad(field, f"must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ApiError(413, field, f"{field}: {len(value)} characters, more than the server's limit of {limit}")
    return value


def _int(value: Any, field: str, form: bool) -> int:
    """JSON ints as they are; form values from their decimal text."""
    if form and isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(field, f"must be an integer, got {value!r}")
    return value


def _float(value: Any, field: str, form: bool) -> float:
    if form and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _bad(field, f"must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(field, f"must be a finite number, got {value!r}")
    return float(value)


def _bool(value: Any, field: str, form: bool) -> bool:
    if form and isinstance(value, str) and value.lower() in ("true", "false", "on", "1", "0"):
        return value.lower() in ("true", "on", "1")
    if not isinstance(value, bool):
        raise _bad(field, f"must be true or false, got {value!r}")
    return value


def _within(value: int, field: str, high: int, limit_name: str) -> int:
    """The server's upper limit (413); the lower bounds are the pipeline's rules."""
    if value > high:
        raise ApiError(413, field, f"{field}: {value} is over the server's limit of {high} ({limit_name})")
    return value


# ---------------------------------------------------------------- media, decoded in memory
def _media_bytes(value: Any, field: str) -> bytes:
    """Bytes of an uploaded file part, or of a base64 string (a data: URL prefix is allowed)."""
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        text = "".join(text.split())  # base64 tools wrap lines
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(field, "is not valid base64 (send the file's bytes base64-encoded)") from None
    else:
        raise _bad(field, f"must be a base64 string or a file upload, got {type(value).__name__}")
    if not data:
        raise _bad(field, "is empty")
    return data


def decode_image(data: bytes, field: str, height: int, width: int) -> np.ndarray:
    """Image bytes (PNG, JPEG, WebP, ...) -> uint8 [height, width, 3] (scaled, centre-cropped)."""
    from PIL import Image, UnidentifiedImageError

    from patchflow.data.io import resize_video

    try:
        with Image.open(io.BytesIO(data)) as im:
            if max(im.size) > MAX_UPLOAD_SIDE:
                raise ApiError(413, field, f"{field}: {im.size[0]}x{im.size[1]} is larger than "
                                           f"{MAX_UPLOAD_SIDE} pixels on a side")
            pixels = np.array(im.convert("RGB"))  # a writable copy (torch warns on read-only arrays)
    except Image.DecompressionBombError:
        raise ApiError(413, field, f"{field}: larger than {MAX_UPLOAD_SIDE} pixels on a side") from None
    except UnidentifiedImageError:
        raise _bad(field, "cannot be decoded as an image (send PNG, JPEG, WebP, GIF or BMP bytes)") from None
    except (OSError, ValueError) as e:  # a truncated or corrupt file of a known format
        raise _bad(field, f"cannot be decoded as an image ({e})") from None
    return resize_video(pixels[None], height, width)[0]  # (H, W, 3)


def decode_video(data: bytes, field: str, height: int, width: int, max_frames: int) -> np.ndarray:
    """Video bytes (mp4, webm, mov, gif, ...) -> uint8 [T, height, width, 3], frames at their own rate.

    Each frame is resized as it is decoded, so memory stays max_frames small frames; a clip with
    more than `max_frames` frames is refused (413) rather than cut silently.
    """
    import av

    from patchflow.data.io import resize_video

    frames = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise _bad(field, "holds no video stream")
            stream = container.streams.video[0]
            if max(stream.codec_context.width, stream.codec_context.height) > MAX_UPLOAD_SIDE:
                raise ApiError(413, field, f"{field}: {stream.codec_context.width}x{stream.codec_context.height} "
                                           f"is larger than {MAX_UPLOAD_SIDE} pixels on a side")
            for frame in container.decode(stream):
                if len(frames) == max_frames:
                    raise ApiError(413, field, f"{field}: more than {max_frames} frames (the server's max_frames); "
                                               f"send a shorter clip")
                frames.append(resize_video(frame.to_ndarray(format="rgb24")[None], height, width)[0])
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise _bad(field, f"cannot be decoded as a video ({e})") from None
    if not frames:
        raise _bad(field, "holds no frames")
    return np.stack(frames)  # (T, H, W, 3)


# ---------------------------------------------------------------- the whole request
def _api_field(argument: str) -> str:
    """The request field of a `VideoPipeline` argument (InputError.field); "request" if it has none."""
    field = {"num_inference_steps": "steps"}.get(argument, argument)
    return field if field in FIELDS else "request"


def _judged(check: Callable[[], Any]) -> Any:
    """Run one of the pipeline's checks, turning its InputError into a 422 on the field it names."""
    from patchflow.pipelines.inputs import InputError

    try:
        return check()
    except InputError as e:
        raise ApiError(422, _api_field(e.field), str(e)) from None


def parse_generation(fields: dict[str, Any], pipe, limits: Limits, form: bool = False) -> Generation:
    """Check a request's fields (JSON values, or strings and bytes when `form`) -> a `Generation`.

    This parses the fields' types and holds them to the server's limits; every rule of the request
    itself is the pipeline's (pipeline_inputs), run before media are decoded and again on the whole
    request after. Raises ApiError (422 a broken rule, 413 over a limit), naming the field, before any
    model work.
    """
    from patchflow.pipelines.inputs import check_geometry, check_sampler, check_task, check_text

    if not isinstance(fields, dict):
        raise ApiError(400, "body", "the body must be a JSON object of fields, e.g. {\"prompt\": \"a red circle\"}")
    if form:  # an empty form input means "not given" (the model's default, or a random seed)
        fields = {k: v for k, v in fields.items() if not (isinstance(v, str) and v.strip() == "")}
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise _bad(unknown[0], f"unknown field; known fields: {', '.join(FIELDS)}")
    d = pipe.defaults
    get = fields.get

    if "prompt" not in fields:
        raise _bad("prompt", "is required: describe the video, e.g. 'a red circle moving right'")
    prompt = _text(fields["prompt"], "prompt", limits.max_prompt_chars)
    negative = _text(get("negative_prompt", ""), "negative_prompt", limits.max_prompt_chars)

    num_frames = _int(get("num_frames", d["num_frames"]), "num_frames", form)
    height = _int(get("height", d["height"]), "height", form)
    width = _int(get("width", d["width"]), "width", form)
    steps = _int(get("steps", d["num_inference_steps"]), "steps", form)
    _within(num_frames, "num_frames", limits.max_frames, "--max-frames")
    _within(height, "height", limits.max_size, "--max-size")
    _within(width, "width", limits.max_size, "--max-size")
    _within(steps, "steps", limits.max_steps, "--max-steps")
    guidance = _float(get("guidance_scale", d["guidance_scale"]), "guidance_scale", form)
    if guidance > MAX_GUIDANCE:
        raise _bad("guidance_scale", f"{guidance:g} is over the server's limit of {MAX_GUIDANCE:g} (1 = no guidance)")
    seed = get("seed")
    seed = random.SystemRandom().randrange(2**31) if seed is None else _int(seed, "seed", form)
    if not 0 <= seed <= MAX_SEED:
        raise _bad("seed", f"must be in [0, {MAX_SEED}], got {seed}")
    extend = get("extend")
    loop = _bool(get("loop", False), "loop", form)
    strength = None if get("strength") is None else _float(get("strength"), "strength", form)

    # the pipeline's rules that need no media, before any upload is decoded
    given = {name for name in MEDIA_FIELDS if get(name) is not None}
    _judged(lambda: check_text(prompt=prompt, negative_prompt=negative))
    _judged(lambda: check_geometry(pipe, num_frames=num_frames, height=height, width=width))
    _judged(lambda: check_sampler(defaults=d, num_inference_steps=steps, guidance_scale=guidance))
    _judged(lambda: check_task(image=get("image"), video=get("video"), end_video=get("end_video"), extend=extend,
                               loop=loop, strength=strength))

    media = {}
    for name in sorted(given):
        data = _media_bytes(fields[name], name)
        media[name] = (decode_image(data, name, height, width) if name == "image"
                       else decode_video(data, name, height, width, limits.max_frames))

    kwargs = dict(prompt=prompt, negative_prompt=negative, num_frames=num_frames, height=height, width=width,
                  num_inference_steps=steps, guidance_scale=guidance, seed=seed, extend=extend, loop=loop,
                  strength=strength, **media)
    req = _judged(lambda: pipe.check_inputs(progress=False, **kwargs))  # the whole task: clip lengths, loops, windows
    summary = {"prompt": prompt, "negative_prompt": negative, "num_frames": num_frames, "height": height,
               "width": width, "steps": steps, "guidance_scale": guidance, "seed": seed, "task": req.task,
               "loop": loop, "strength": strength,
               "unknown_words": req.unknown_words[0]}  # what a Shapes World model cannot place; still generated
    return Generation(request=req, summary=summary)
