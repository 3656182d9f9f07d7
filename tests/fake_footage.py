"""A stand-in for OpenCV's source package on a local PEP 503 index, for the `patchflow data fetch` tests."""

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from patchflow.data import footage
from patchflow.data.io import write_video


def fake_opencv_index(root: Path, links: tuple[str, ...] = ()) -> tuple[str, str]:
    """Build `root/simple/opencv-python/index.html` and the sdist it links to, holding every file the
    fetch keeps: the clips are real 9-frame 32x32 H.264 videos (also under their .avi names; PyAV
    probes the content), the photos real 40x30 PNGs. Names in `links` are stored as symlinks instead.
    Returns (the index's file:// URL, the sdist's sha256)."""
    name, version, _ = footage.OPENCV_SDIST
    top = f"opencv_python-{version}/"
    members = {**footage.OPENCV_CLIPS, **{n: "opencv/samples/data/" + n for n in footage.OPENCV_PHOTOS}}
    members.update({n: n for n in ("LICENSE.txt", "LICENSE-3RD-PARTY.txt", "opencv/LICENSE")})
    png = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(png, format="PNG")
    frames = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    clip = write_video(frames, root / "clip.mp4").read_bytes()
    archive = root / "files" / f"opencv_python-{version}.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        for flat, path in members.items():
            info = tarfile.TarInfo(top + path)
            if flat in links:
                info.type, info.linkname = tarfile.SYMTYPE, "elsewhere"
                tar.addfile(info)
                continue
            data = png.getvalue() if flat in footage.OPENCV_PHOTOS else clip if flat in footage.OPENCV_CLIPS \
                else flat.encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    page = root / "simple" / name / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<a href="../../files/{archive.name}#sha256={sha}">{archive.name}</a>')
    return (root / "simple").as_uri(), sha
