"""The command line: help, info, shapes and eval shapes end to end."""

import json
import subprocess
import sys

from patchflow.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "patchflow", *args], capture_output=True, text=True)


def test_help_and_info():
    out = run("--help")
    assert out.returncode == 0 and "shapes" in out.stdout and "eval" in out.stdout
    out = run("info")
    assert out.returncode == 0 and "torch" in out.stdout and "default model" in out.stdout


def test_shapes_then_eval(tmp_path, capsys):
    prompt = "a blue square moving up on a white background"
    assert main(["shapes", prompt, "-o", str(tmp_path / "x.mp4")]) == 0
    assert main(["eval", "shapes", str(tmp_path / "x.mp4"), "--prompt", prompt, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["all"] == 1.0
    assert main(["eval", "shapes", str(tmp_path / "x.mp4"), "--prompt", prompt.replace("up", "down")]) == 1


def test_preview_and_frames_folder(tmp_path):
    assert main(["shapes", "--preview", "--count", "4", "-o", str(tmp_path / "grid.gif")]) == 0
    assert (tmp_path / "grid.gif").stat().st_size > 0
    assert main(["shapes", "a red circle growing", "--frames", "5", "-o", str(tmp_path / "frames") + "/"]) == 0
    assert len(list((tmp_path / "frames").glob("*.png"))) == 5


def test_bad_prompt_is_a_short_error(capsys):
    assert main(["shapes", "a pink ball", "-o", "unused.mp4"]) == 2
    assert "pink" in capsys.readouterr().err


def test_eval_vae_json(tmp_path, capsys):
    from patchflow.data.io import write_video
    from patchflow.data.shapes import render
    from patchflow.vae import VAE_PRESETS, VideoVAE

    VideoVAE(VAE_PRESETS["tiny"]()).save_pretrained(tmp_path / "run" / "final" / "vae")
    write_video(render("a red circle moving right", 32, 32, 9), tmp_path / "clip.gif")
    assert main(["eval", "vae", str(tmp_path / "clip.gif"), "--model", str(tmp_path / "run"),
                 "--frames", "9", "--height", "32", "--width", "32", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["psnr"] > 0 and 0 <= summary["ssim"] <= 1 and len(summary["clips"]) == 1
    assert main(["eval", "vae", str(tmp_path / "clip.gif"), "--model", str(tmp_path / "nothing")]) == 2


def test_every_command_has_help():
    for command in ("info", "shapes", "train", "cache", "plot", "generate", "serve", "bench dit", "eval shapes",
                    "eval vae", "eval model"):
        out = run(*command.split(), "--help")
        assert out.returncode == 0 and "usage: patchflow" in out.stdout, command
