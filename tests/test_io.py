"""Video I/O: round trips in every format, odd sizes, 1-frame videos, bad files."""

import numpy as np
import pytest

from patchflow.data.io import VideoReadError, read_video, resize_video, write_video
from patchflow.shapes.world import render


@pytest.fixture(scope="module")
def clip():
    return render("a large red circle moving right on a white background", 48, 64, 17)


@pytest.mark.parametrize("name,lossless", [("x.mp4", False), ("x.webm", False), ("x.gif", True), ("frames/", True)])
def test_round_trip(tmp_path, clip, name, lossless):
    path = write_video(clip, tmp_path / name, fps=8)
    video, fps = read_video(path)
    assert video.dtype == np.uint8 and video.shape == clip.shape
    assert abs(fps - 8) < 0.5
    err = np.abs(video.astype(int) - clip).mean()
    assert err == 0 if lossless else err < 3


@pytest.mark.parametrize("name", ["odd.mp4", "odd.webm", "odd.gif", "odd/"])
def test_odd_sizes(tmp_path, name):
    clip = render("a small blue square standing still on a black background", 33, 47, 5)
    video, _ = read_video(write_video(clip, tmp_path / name))
    if name.endswith((".mp4", ".webm")):  # yuv420p: padded by one replicated row/column
        assert video.shape == (5, 34, 48, 3)
        assert np.abs(video[:, :33, :47].astype(int) - clip).mean() < 3
    else:
        assert video.shape == clip.shape


@pytest.mark.parametrize("name", ["one.mp4", "one.gif", "one.png", "one/"])
def test_single_frame(tmp_path, name):
    clip = render("a small green triangle growing on a gray background", 32, 32, 1)
    video, _ = read_video(write_video(clip, tmp_path / name))
    assert video.shape == (1, 32, 32, 3)


def test_frame_sampling(tmp_path, clip):
    path = write_video(clip, tmp_path / "x.gif", fps=8)
    video, fps = read_video(path, fps=4)
    assert fps == 4 and len(video) == 9
    np.testing.assert_array_equal(video[1], clip[2])
    video, _ = read_video(path, fps=8, start=1.0, num_frames=3)
    np.testing.assert_array_equal(video, clip[8:11])


def test_frame_sampling_mp4(tmp_path, clip):
    video, fps = read_video(write_video(clip, tmp_path / "x.mp4", fps=8), start=0.5, num_frames=4)
    assert video.shape[0] == 4 and fps == 8
    assert np.abs(video.astype(int) - clip[4:8]).mean() < 3


def test_resize_modes():
    video = np.zeros((2, 40, 80, 3), np.uint8)
    video[:, :, 20:60] = 255  # a white centre band, black sides
    crop = resize_video(video, 32, 32, "crop")
    pad = resize_video(video, 32, 32, "pad")
    stretch = resize_video(video, 32, 32, "stretch")
    assert crop.shape == pad.shape == stretch.shape == (2, 32, 32, 3)
    assert crop.mean() > 200  # the centre crop is the white band
    assert pad[:, :8].max() == 0 and pad[:, 16].mean() > 100  # letterboxed top, content in the middle
    with pytest.raises(ValueError, match="resize mode"):
        resize_video(video, 32, 32, "zoom")


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 50])
def test_corrupt_files_name_the_file(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoReadError, match="broken.mp4"):
        read_video(path)


def test_missing_and_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="no PNG/JPEG"):
        read_video(tmp_path / "empty")
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(VideoReadError, match="bad.png"):
        read_video(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="uint8"):
        write_video(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="use one of"):
        write_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "x.avi")


def test_contact_sheet_strips_and_per_row(tmp_path):
    from PIL import Image

    from patchflow.data.grid import contact_sheet

    videos = [np.full((17, 8, 8, 3), 40 * i, np.uint8) for i in range(4)]
    one = Image.open(contact_sheet(videos, ["a"] * 4, tmp_path / "one.png"))
    two = Image.open(contact_sheet(videos, ["a"] * 4, tmp_path / "two.png", per_row=2))
    # A strip is 4 frames of 8 px, doubled by video_grid's scale 2: 64 px wide plus 4 px gaps.
    assert one.width == 4 + (64 + 4) and two.width == 4 + 2 * (64 + 4)
    assert two.height < one.height  # two rows of strips instead of four
    assert np.asarray(two)[4, 4 + 68].tolist() == [40, 40, 40]  # the 2nd video, beside the 1st
