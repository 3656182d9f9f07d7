"""Video I/O: read and write videos as `np.uint8 [T, H, W, 3]`.

    video, fps = read_video("clip.mp4", fps=8, start=1.0, num_frames=17)
    video = resize_video(video, 64, 64, mode="crop")        # or "pad", "stretch"
    write_video(video, "out.mp4", fps=8)                    # .mp4 .webm .gif, or a folder/

Reads mp4/webm/mov/mkv/avi (PyAV), gif (Pillow), still images, and folders of
PNG/JPEG frames. Every failure names the file.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence, UnidentifiedImageError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
WRITE_SUFFIXES = (".mp4", ".webm", ".gif", ".png")
FOLDER_FPS = 8.0  # frame rate assumed for folders of frames and still images
RESIZE_MODES = ("crop", "pad", "stretch")


class VideoReadError(ValueError):
    """A file that cannot be read as a video or image; the message names the file."""


# ---------------------------------------------------------------- reading
def read_video(path: str | os.PathLike, fps: float | None = None, start: float = 0.0,
               num_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Read a video, gif, image or folder of frames as (np.uint8 [T, H, W, 3], fps).

    fps: resample to this frame rate (nearest source frame at each target time);
    None keeps the source rate. start: seconds to skip. num_frames: at most this
    many frames (None = to the end).
    """
    path = Path(path)
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if start < 0:
        raise ValueError(f"start must be >= 0 seconds, got {start}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not path.exists():
        raise FileNotFoundError(f"no such video file or folder: {path}")
    if path.is_dir():
        frames, times, src_fps = _read_folder(path)
    elif path.suffix.lower() == ".gif":
        frames, times, src_fps = _read_gif(path)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        frames, times, src_fps = [_read_image(path)], [0.0], FOLDER_FPS
    else:
        frames, times, src_fps = _read_av(path, start, fps, num_frames)
    if not frames:
        raise VideoReadError(f"{path}: no frames could be decoded")
    out_fps = fps or src_fps
    picked = _sample_times(np.asarray(times), start, out_fps, num_frames, src_fps)
    if not picked:
        raise VideoReadError(f"{path}: no frames at or after start={start}s (clip is {times[-1]:.2f}s long)")
    return np.stack([frames[i] for i in picked]), float(out_fps)


def _sample_times(times: np.ndarray, start: float, fps: float, num_frames: int | None,
                  src_fps: float) -> list[int]:
    """Indices of the source frames nearest to start + k / fps, k = 0, 1, ..."""
    end = times[-1] + 0.5 / src_fps  # the last frame lasts one source frame
    picked, k = [], 0
    while num_frames is None or k < num_frames:
        t = start + k / fps
        if t >= end:
            break
        picked.append(int(np.abs(times - t).argmin()))
        k += 1
    return picked


def _read_av(path: Path, start: float, fps: float | None, num_frames: int | None):
    import av  # imported here: PyAV loads FFmpeg, only needed for real video files

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream in this file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            src_fps = float(stream.average_rate or stream.guessed_rate or FOLDER_FPS)
            # Decode only as far as needed: up to start + duration (+ a frame of slack).
            stop = None if num_frames is None else start + (num_frames + 1) / (fps or src_fps)
            origin = stream.start_time or 0  # time is measured from the stream's first frame
            frames, times = [], []
            for frame in container.decode(stream):
                if frame.pts is None:
                    t = len(times) / src_fps
                else:
                    t = float((frame.pts - origin) * stream.time_base)
                if stop is not None and t > stop:
                    break
                if t + 1.0 / src_fps < start:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoReadError(f"{path}: cannot be decoded as a video ({e})") from e
    return frames, times, src_fps


def _read_gif(path: Path):
    """GIF frames expanded to a constant rate (encoders merge identical frames into one
    longer frame). The rate is the one patchflow wrote in the comment, else the GCD of
    the frame durations."""
    try:
        with Image.open(path) as im:
            comment = im.info.get("comment", b"")
            pieces, durations = [], []
            for frame in ImageSequence.Iterator(im):
                pieces.append(np.asarray(frame.convert("RGB")))
                durations.append(max(int(frame.info.get("duration") or 100), 10))
    except (UnidentifiedImageError, OSError) as e:
        raise VideoReadError(f"{path}: cannot be read as a GIF ({e})") from e
    text = comment.decode(errors="ignore") if isinstance(comment, bytes) else str(comment)
    if text.startswith("patchflow fps="):
        fps = float(text.split("=", 1)[1])
    else:
        fps = 1000.0 / np.gcd.reduce(durations)
    frames, times = [], []
    for piece, ms in zip(pieces, durations):
        for _ in range(max(1, round(ms / 1000.0 * fps))):
            times.append(len(frames) / fps)
            frames.append(piece)
    return frames, times, fps


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise VideoReadError(f"{path}: cannot be read as an image ({e})") from e


def _read_folder(path: Path):
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VideoReadError(f"{path}: folder holds no PNG/JPEG frames")
    frames = [_read_image(f) for f in files]
    if len({f.shape for f in frames}) > 1:
        raise VideoReadError(f"{path}: frames have different sizes {sorted({f.shape for f in frames})}")
    return frames, [i / FOLDER_FPS for i in range(len(frames))], FOLDER_FPS


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as np.uint8 [H, W, 3]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    return _read_image(path)


# ---------------------------------------------------------------- resizing
def resize_video(video: np.ndarray, height: int, width: int, mode: str = "crop") -> np.ndarray:
    """Resize uint8 [T, H, W, 3] to [T, height, width, 3].

    crop: scale to cover, then centre-crop (keeps aspect ratio, loses borders);
    pad: scale to fit, then centre-pad with black (keeps everything);
    stretch: scale each axis independently.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    video = check_video(video)
    t, h, w, _ = video.shape
    if (h, w) == (height, width):
        return video
    if mode == "stretch":
        return _scale(video, height, width)
    scale = max(height / h, width / w) if mode == "crop" else min(height / h, width / w)
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    if mode == "crop":
        sh, sw = max(sh, height), max(sw, width)
        scaled = _scale(video, sh, sw)
        top, left = (sh - height) // 2, (sw - width) // 2
        return scaled[:, top:top + height, left:left + width]
    sh, sw = min(sh, height), min(sw, width)
    out = np.zeros((t, height, width, 3), dtype=np.uint8)
    top, left = (height - sh) // 2, (width - sw) // 2
    out[:, top:top + sh, left:left + sw] = _scale(video, sh, sw)
    return out


def _scale(video: np.ndarray, height: int, width: int) -> np.ndarray:
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    # Antialiasing matters when shrinking (it is a no-op when enlarging).
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def check_video(video) -> np.ndarray:
    """Validate a user video: np.uint8 [T, H, W, 3] (a single [H, W, 3] image becomes T=1)."""
    video = np.asarray(video)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video of shape [T, H, W, 3] (or an image [H, W, 3]), got {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels in 0..255, got {video.dtype}")
    if min(video.shape[:3]) < 1:
        raise ValueError(f"video is empty: shape {video.shape}")
    return video


# ---------------------------------------------------------------- writing
def write_video(video, path: str | os.PathLike, fps: float = 8.0, quality: int = 17) -> Path:
    """Write uint8 [T, H, W, 3] to .mp4 (H.264, yuv420p), .webm (VP9), .gif, .png
    (one frame), or a folder of PNG frames (a path ending in '/' or without a suffix).

    quality: the encoder's constant rate factor (lower is better; 17 is near lossless).
    Odd sizes are padded by one replicated row/column for yuv420p codecs.
    """
    video = check_video(video)
    path = Path(path)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    suffix = path.suffix.lower()
    is_dir = str(path).endswith(("/", os.sep)) or path.is_dir() or suffix == ""
    if not is_dir and suffix not in WRITE_SUFFIXES:
        raise ValueError(f"cannot write {path.name!r}: use one of {WRITE_SUFFIXES} or a folder path for PNG frames")
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(video):
            Image.fromarray(frame).save(path / f"frame_{i:05d}.png")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        if len(video) != 1:
            raise ValueError(f"{path.name}: a .png holds one frame, got {len(video)}; use a folder path for frames")
        Image.fromarray(video[0]).save(path)
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in video]
        # GIF durations are in 10 ms steps: keep the exact rate in a comment for read_video.
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                       optimize=False, disposal=1, comment=f"patchflow fps={fps:g}".encode())
    else:
        _write_av(video, path, fps, quality)
    return path


def _write_av(video: np.ndarray, path: Path, fps: float, quality: int) -> None:
    import av

    # yuv420p stores colour at half resolution: both sides must be even.
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    codec = "libx264" if path.suffix.lower() == ".mp4" else "libvpx-vp9"
    options = {"crf": str(quality)}
    if codec == "libvpx-vp9":
        options.update({"b:v": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"})
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000), options=options)
        stream.height, stream.width = video.shape[1], video.shape[2]
        stream.pix_fmt = "yuv420p"
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
