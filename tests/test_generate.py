"""`patchflow generate` (generate.py) on a tiny saved model: files written, options, errors."""

import argparse

import numpy as np
import pytest
import torch

from patchflow.data.io import read_video, write_video
from patchflow.models.dit import DiT, dit_config
from patchflow.cli.generate import add_generate_arguments, output_paths, run_generate
from patchflow.pipelines.pipeline import VideoPipeline
from patchflow.pipelines.prompts import PromptWarning
from patchflow.models.text import load_text_encoder
from patchflow.models.vae import VAE_PRESETS, VideoVAE


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    dit = DiT(dit_config("tiny", in_channels=4, text_dim=64))
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.05)
    pipe = VideoPipeline(dit, VideoVAE(VAE_PRESETS["tiny"]()), load_text_encoder("tiny"),
                         defaults={"num_frames": 9, "height": 16, "width": 16, "num_inference_steps": 2})
    folder = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(folder)
    return folder


def _args(*argv):
    return add_generate_arguments(argparse.ArgumentParser()).parse_args([str(a) for a in argv])


def test_generate_writes_a_video(model, tmp_path, capsys):
    out = tmp_path / "red.mp4"
    assert run_generate(_args("a red circle moving right", "-o", out, "--model", model, "--steps", 2)) == 0
    video, fps = read_video(out)
    assert video.shape == (9, 16, 16, 3) and fps == 8
    printed = capsys.readouterr().out
    assert f"wrote {out} (9 frames, 16x16" in printed and "done: 1 video(s) in" in printed


def test_generate_rounds_frames_and_takes_tasks(model, tmp_path, capsys):
    image = tmp_path / "start.png"
    write_video(np.full((1, 20, 20, 3), 90, np.uint8), image)  # another size: resized with a note
    out = tmp_path / "i2v.gif"
    with pytest.warns(UserWarning, match="resized"):
        run_generate(_args("x", "-o", out, "--model", model, "--frames", 12, "--image", image, "--seed", 3))
    assert "note: 12 frames rounded to 13 (the model takes 1 + 4k" in capsys.readouterr().err
    assert read_video(out)[0].shape[0] == 13
    clip = tmp_path / "clip.gif"
    write_video(read_video(out)[0][:5], clip)
    run_generate(_args("x", "-o", tmp_path / "ext.gif", "--model", model, "--video", clip, "--extend", "forward",
                       "--frames", 13))
    run_generate(_args("x", "-o", tmp_path / "loop.gif", "--model", model, "--loop", "--guidance", 1,
                       "--sampler", "heun", "--no-expand"))
    run_generate(_args("x", "-o", tmp_path / "edit.gif", "--model", model, "--video", clip, "--strength", 0.5,
                       "--guidance-interval", 0.3, 1))
    assert read_video(tmp_path / "ext.gif")[0].shape[0] == 13 and read_video(tmp_path / "edit.gif")[0].shape[0] == 5


def test_generate_batch_prompts_into_a_folder(model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na red circle\n\na blue square moving up\n")
    run_generate(_args("--batch-prompts", prompts, "-o", f"{tmp_path}/outs/", "--model", model, "--seed", 7,
                       "--batch-size", 2))
    assert sorted(p.name for p in (tmp_path / "outs").iterdir()) == ["a-blue-square-moving-up-s8.mp4",
                                                                     "a-red-circle-s7.mp4"]
    run_generate(_args("an image", "-o", tmp_path / "img.png", "--model", model, "--frames", 1))
    assert read_video(tmp_path / "img.png")[0].shape == (1, 16, 16, 3)


def test_generate_notes_words_outside_the_world(model, tmp_path, capsys, recwarn):
    out = tmp_path / "dragon.png"
    assert run_generate(_args("a dragon flying over a city", "-o", out, "--model", model, "--frames", 1)) == 0
    err = capsys.readouterr().err
    assert ("patchflow generate: note: not understood by the Shapes World model: dragon, flying, city "
            "(the video still follows the words it knows)") in err
    assert read_video(out)[0].shape == (1, 16, 16, 3)  # generated all the same
    assert not [w for w in recwarn if issubclass(w.category, PromptWarning)]  # told once, as the note
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball rising\na cat\n")
    run_generate(_args("--batch-prompts", prompts, "-o", f"{tmp_path}/outs/", "--model", model, "--frames", 1))
    err = capsys.readouterr().err
    assert "note: 'a cat': not understood by the Shapes World model: cat (" in err and "rising" not in err
    run_generate(_args("a dragon", "-o", out, "--model", model, "--frames", 1, "--no-expand"))
    assert "not understood" not in capsys.readouterr().err  # prompts as written are not judged


def test_output_paths():
    assert [str(p) for p in output_paths("out/a.gif", ["x", "y"], 0, 9)] == ["out/a_000.gif", "out/a_001.gif"]
    assert output_paths("a.gif", ["x"], 0, 9)[0].name == "a.gif"
    assert [p.name for p in output_paths(None, ["A cat!", "A cat!"], 2, 9)] == ["a-cat-s2.mp4", "a-cat-s3.mp4"]
    assert output_paths("dir/", ["x"], 0, 1)[0].suffix == ".png"
    with pytest.raises(ValueError, match="a .png holds one frame"):
        output_paths("a.png", ["x"], 0, 9)
    with pytest.raises(ValueError, match="use one of"):
        output_paths("a.avi", ["x"], 0, 9)


def test_generate_errors(model, tmp_path):
    with pytest.raises(ValueError, match="give a PROMPT or --batch-prompts"):
        run_generate(_args("--model", model))
    with pytest.raises(FileNotFoundError, match="not a pipeline folder"):
        run_generate(_args("x", "--model", tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        run_generate(_args("x", "--model", model, "--image", tmp_path / "missing.png", "-o", tmp_path / "a.gif"))
    with pytest.raises(ValueError, match="height must be a multiple of 8 .*got 20"):
        run_generate(_args("x", "--model", model, "--height", 20, "-o", tmp_path / "a.gif"))
    assert not (tmp_path / "a.gif").exists()
