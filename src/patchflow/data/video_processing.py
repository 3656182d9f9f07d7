"""Video processing between users and models, in one place (diffusers' VideoProcessor plays this role).

    to_model_video(uint8 [T, H, W, 3]) -> float [3, T, H, W] in [-1, 1]    (what the VAE takes)
    to_user_video(float [3, T, H, W]) -> uint8 [T, H, W, 3]                 (what users get)
    load_image / load_video: a path, PIL image(s) or uint8 array -> uint8 frames
    fit_frames: inputs of another size scaled and centre-cropped to the canvas, with a warning

Loaders raise ValueError (unreadable or badly shaped input) or TypeError (an unsupported kind);
the pipeline's checks (pipeline_inputs) turn both into errors that name the argument.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch

from patchflow.data.io import check_video, read_image, read_video, resize_video


def to_model_video(video: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [3, T, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(video)).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def to_user_video(video: torch.Tensor) -> np.ndarray:
    """float [3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    x = video.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def load_image(image: Any, name: str = "image") -> np.ndarray:
    """A path, PIL image or uint8 array [H, W, 3] -> np.uint8 [H, W, 3]."""
    if isinstance(image, (str, os.PathLike)):
        return np.array(read_image(image))  # names the file when missing or unreadable; a writable copy
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3:
            raise ValueError(f"{name} must be one image [H, W, 3], got shape {image.shape}")
        return check_video(image)[0]
    raise TypeError(f"{name} must be a file path, a PIL image or a uint8 array [H, W, 3], "
                    f"got {type(image).__name__}")


def load_video(video: Any, name: str = "video") -> np.ndarray:
    """A path, a list of PIL frames or a uint8 array [T, H, W, 3] -> np.uint8 [T, H, W, 3]."""
    if isinstance(video, (str, os.PathLike)):
        return read_video(video)[0]
    if isinstance(video, (list, tuple)) and video and all(hasattr(f, "convert") for f in video):
        return np.stack([np.array(f.convert("RGB")) for f in video])
    if isinstance(video, np.ndarray):
        return check_video(video)
    raise TypeError(f"{name} must be a file path, a list of PIL images or a uint8 array "
                    f"[T, H, W, 3], got {type(video).__name__}")


def fit_frames(frames: list[np.ndarray], height: int, width: int, name: str) -> list[np.ndarray]:
    """Resize [.., H, W, 3] inputs to the canvas size (centre crop), saying so."""
    out = []
    for i, f in enumerate(frames):
        if f.shape[-3:-1] != (height, width):
            warnings.warn(f"{name} is {f.shape[-2]}x{f.shape[-3]}, resized (scale and centre crop) to "
                          f"{width}x{height}", stacklevel=4)
            f = resize_video(f if f.ndim == 4 else f[None], height, width)
            f = f if frames[i].ndim == 4 else f[0]
        out.append(f)
    return out
