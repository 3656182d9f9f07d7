"""Tasks as frame masks: which frames are given (clean, t = 0) and which are generated.

One model does every task because the timestep is per token: given latent frames
stay clean and the rest is denoised. This file holds the one mask logic that
training and generation share:

    frame_mask(n, head, tail)          the first `head` and last `tail` of n frames are given
    latent_frame_mask(pixel_mask, ft)  a latent frame is given iff every pixel frame it encodes is

Training draws a task per clip in latent frames (`sample_task`). Generation
places the user's frames on a pixel canvas (`place_conditions`), encodes it and
conditions on the latent frames it fully covers. Long videos and loops are
sequences of windows over that canvas (`plan_windows`, `loop_plan`).

The causal VAE groups pixel frames unevenly: latent frame 0 encodes pixel frame 0
alone, latent frame j >= 1 encodes pixel frames 1 + (j-1) ft .. j ft. So a clip
at the start is covered exactly when it has 1 + k ft frames, a clip at the end
when it has a multiple of ft frames (for a total of 1 + m ft frames).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from patchflow.models.sizes import latent_frames  # T' = 1 + (T - 1) / ft, checked: the VAE's rule

TASKS = ("text_to_video", "image_to_video", "extend_forward", "extend_backward", "connect")


# ---------------------------------------------------------------- the shared mask logic
def frame_mask(num_frames: int, head: int = 0, tail: int = 0) -> torch.Tensor:
    """Bool [num_frames]: True on the first `head` and the last `tail` frames (the given ones)."""
    if num_frames < 1 or head < 0 or tail < 0 or head + tail > num_frames:
        raise ValueError(f"frame_mask needs 0 <= head + tail <= num_frames >= 1; got head {head}, tail {tail}, "
                         f"num_frames {num_frames}")
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[:head] = True
    mask[num_frames - tail:] = True
    return mask


def latent_support(j: int, ft: int) -> range:
    """The pixel frames that latent frame j encodes: {0} for j = 0, else 1 + (j-1) ft .. j ft."""
    return range(0, 1) if j == 0 else range(1 + (j - 1) * ft, j * ft + 1)


def latent_frame_mask(pixel_mask: torch.Tensor, ft: int) -> torch.Tensor:
    """Pixel-frame mask [T] -> latent-frame mask [T']: a latent frame is given iff all its pixel frames are."""
    pixel_mask = torch.as_tensor(pixel_mask, dtype=torch.bool)
    t_lat = latent_frames(pixel_mask.shape[0], ft)
    groups = pixel_mask[1:].view(t_lat - 1, ft)  # (T'-1, ft): the pixel frames of latent frames 1..
    return torch.cat([pixel_mask[:1], groups.all(dim=1)])


def covered_pixels(latent_mask: torch.Tensor, ft: int) -> torch.Tensor:
    """Latent-frame mask [T'] -> the pixel frames [1 + (T'-1) ft] those latent frames encode."""
    latent_mask = torch.as_tensor(latent_mask, dtype=torch.bool)
    return torch.cat([latent_mask[:1], latent_mask[1:].repeat_interleave(ft)])


# ---------------------------------------------------------------- training
def sample_task(latent_frames: int, rates: dict[str, float], rng: random.Random,
                temporal_patch: int = 1) -> tuple[str, torch.Tensor]:
    """Draw a task for a clip of `latent_frames` latent frames: (name, given-frame mask bool [latent_frames]).

    rates: task name -> weight (>= 0; normalised over the tasks the clip is long enough for).
        text_to_video    nothing given
        image_to_video   latent frame 0 given
        extend_forward   the first k, 1 <= k < T'
        extend_backward  the last k
        connect          the first k1 and the last k2, leaving >= 1 frame to generate
    temporal_patch: the DiT's pt; given spans are whole temporal patches (counts in units of pt, so
        image_to_video gives the first pt latent frames when pt > 1).
    A 1-frame latent (an image) is always text_to_video, as is a clip too short for any task drawn.
    """
    unknown = sorted(set(rates) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task names {unknown}; tasks are {list(TASKS)}")
    if any(not w >= 0 for w in rates.values()):
        raise ValueError(f"task rates must be >= 0, got {rates}")
    if temporal_patch < 1 or latent_frames < 1 or latent_frames % temporal_patch:
        raise ValueError(f"latent_frames {latent_frames} must be a positive multiple of temporal_patch {temporal_patch}")
    units = latent_frames // temporal_patch  # the mask is drawn in whole temporal patches
    min_units = {"text_to_video": 1, "image_to_video": 2, "extend_forward": 2, "extend_backward": 2, "connect": 3}
    feasible = {name: w for name, w in rates.items() if w > 0 and units >= min_units[name]}
    if units == 1 or not feasible:
        return "text_to_video", frame_mask(latent_frames)
    total = sum(feasible.values())
    pick, acc = rng.random() * total, 0.0
    name = list(feasible)[-1]
    for candidate, weight in feasible.items():
        acc += weight
        if pick < acc:
            name = candidate
            break
    head = tail = 0
    if name == "image_to_video":
        head = 1
    elif name == "extend_forward":
        head = rng.randint(1, units - 1)
    elif name == "extend_backward":
        tail = rng.randint(1, units - 1)
    elif name == "connect":
        head = rng.randint(1, units - 2)
        tail = rng.randint(1, units - 1 - head)
    return name, frame_mask(latent_frames, head * temporal_patch, tail * temporal_patch)


# ---------------------------------------------------------------- generation: the pixel canvas
def image_frames(image_frame: int, ft: int) -> range:
    """The pixel frames an image given at `image_frame` fills: the whole support of its latent frame.

    Frame 0 is its own latent frame, so an image there is exact. Frame k >= 1 lies in latent frame
    j = ceil(k / ft), which encodes ft pixel frames together; one image cannot be that latent on its
    own, so the image is held for all ft frames of the group (a still of ft / fps seconds around k).
    """
    j = -(-image_frame // ft)  # ceil(k / ft)
    return latent_support(j, ft)


def place_conditions(batch: int, num_frames: int, height: int, width: int, ft: int,
                     image: list[np.ndarray] | None = None, image_frame: int = 0,
                     video: list[np.ndarray] | None = None, extend: str | None = None,
                     end_video: list[np.ndarray] | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """Put the user's frames on a canvas: (canvas uint8 [B, T, H, W, 3], given bool [T]).

    image[b] uint8 [H, W, 3] at `image_frame` (see `image_frames`); video[b] uint8 [n, H, W, 3] at the
    start (extend "forward" or with end_video) or the end (extend "backward"); end_video[b] at the end.
    Inputs must already have the canvas size and fit (the pipeline checks lengths first).
    """
    canvas = np.zeros((batch, num_frames, height, width, 3), dtype=np.uint8)
    head = tail = 0
    if video is not None:
        n = video[0].shape[0]
        if extend == "backward":
            canvas[:, num_frames - n:] = np.stack(video)
            tail = n
        else:
            canvas[:, :n] = np.stack(video)
            head = n
    if end_video is not None:
        tail = end_video[0].shape[0]
        canvas[:, num_frames - tail:] = np.stack(end_video)
    given = frame_mask(num_frames, head, tail)
    if image is not None:
        frames = image_frames(image_frame, ft)
        canvas[:, frames.start:frames.stop] = np.stack(image)[:, None]
        given[frames.start:frames.stop] = True
    return canvas, given


def fill_unknown(frames: np.ndarray, known: torch.Tensor) -> np.ndarray:
    """Copy of frames [B, T, H, W, 3] with each unknown frame replaced by the nearest known one.

    The causal encoder reads the frames before a given clip as context; a still of the clip's first
    frame is a plausible context where nothing is known yet (a clip that starts from rest).
    """
    known_idx = np.flatnonzero(known.numpy())
    if known_idx.size == 0:
        return frames
    nearest = known_idx[np.abs(np.arange(frames.shape[1])[:, None] - known_idx[None]).argmin(axis=1)]  # (T,)
    return frames[:, nearest]


# ---------------------------------------------------------------- generation: windows
def context_frames(window: int, ft: int, direction: str) -> int:
    """Overlap between consecutive windows of `window` frames: about half, in whole latent frames.

    Forward the context starts a window, so it is 1 + j ft frames (latent frame 0 plus j more);
    backward it ends one: j ft frames. Either way at least one latent frame is left to generate.
    """
    n = latent_frames(window, ft)
    if n < 2:
        raise ValueError(f"windows of {window} frames (one latent frame) cannot overlap; videos longer than "
                         "the trained length need a model trained on clips of >= 2 latent frames")
    return 1 + (n - 1) // 2 * ft if direction == "forward" else max(1, n // 2) * ft


def plan_windows(total: int, window: int, overlap: int, direction: str = "forward") -> list[tuple[int, int]]:
    """Windows [start, stop) of `window` frames (or `total` if shorter) covering 0..total in order.

    Consecutive windows share at least `overlap` frames; the last window is moved to end exactly at
    `total` (more overlap, never a short window). direction "backward" mirrors the plan, from the end.
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    if total <= window:
        spans = [(0, total)]
    elif not 0 < overlap < window:
        raise ValueError(f"overlap must be in (0, window={window}), got {overlap}")
    else:
        spans, stop = [(0, window)], window
        while stop < total:
            start = min(stop - overlap, total - window)
            stop = start + window
            spans.append((start, stop))
    if direction == "backward":
        spans = [(total - b, total - a) for a, b in spans]
    return spans


def loop_plan(num_frames: int, window: int, ft: int) -> tuple[int, int, int]:
    """(context c, regenerated g, end e) frames of the loop pass; c + g + e is a window length.

    The loop pass re-generates the last g frames of a finished video V as a transition from
    V[T-g-c : T-g] (context before) into V[0 : e] (the start, after): the result's last frame then
    leads into its first. e = ft (one latent frame at the end), g about half of the rest.
    """
    span = min(window, num_frames + ft)
    span = 1 + (span - 1) // ft * ft  # a valid window length
    rest_latents = (span - ft - 1) // ft  # latent frames after the first in c + g
    if rest_latents < 1:
        raise ValueError(f"loop=True needs num_frames >= {1 + ft} and a window of >= {1 + 2 * ft} frames; "
                         f"got num_frames {num_frames}, window {window}")
    g = ft * max(1, rest_latents // 2)
    return span - ft - g, g, ft
