"""scripts/ship_model.py turns a training run into the shipped pipeline folder."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from patchflow.pipelines.pipeline import VideoPipeline
from patchflow.training.config import load_config
from patchflow.training.loop import train

ROOT = Path(__file__).resolve().parents[1]


def test_ship_model_writes_an_fp16_shapes_pipeline(tmp_path):
    run = tmp_path / "run"
    train("dit", load_config(ROOT / "configs" / "tiny.toml", ["train.steps=1", "train.sample_every=0",
                                                                 "data.sizes=[[32, 32]]", "data.frames=[5]"]),
          run, progress=False)
    out = tmp_path / "shipped"
    out.mkdir()
    (out / "README.md").write_text("# the model card\n")  # a re-ship replaces the weights, not the card
    (out / "stale.bin").write_text("old")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "ship_model.py"), str(run), "-o", str(out),
                    "--steps", "12", "--guidance", "3.5", "--shift", "3", "--guidance-interval", "0.3", "1"], check=True, capture_output=True, text=True)
    assert (out / "README.md").read_text() == "# the model card\n" and not (out / "stale.bin").exists()
    pipe = VideoPipeline.from_pretrained(out)
    assert pipe.world == "shapes"
    defaults = pipe.defaults
    assert (defaults["num_inference_steps"], defaults["guidance_scale"], defaults["shift"]) == (12, 3.5, 3)
    assert list(defaults["guidance_interval"]) == [0.3, 1.0]
    kwargs = dict(num_frames=5, height=32, width=32, seed=0, progress=False)
    by_default = pipe("a red circle moving left", **kwargs)  # the saved default shift is the one used
    assert np.array_equal(by_default, pipe("a red circle moving left", shift=3.0, **kwargs))
    assert not np.array_equal(by_default, pipe("a red circle moving left", shift=1.0, **kwargs))
    weights = load_file(out / "transformer" / "model.safetensors")
    assert all(w.dtype == torch.float16 for w in weights.values() if w.is_floating_point())
    # A decoder-only VAE whose encoder is not the DiT's is refused, and nothing is written.
    other = tmp_path / "other-vae"
    pipe.vae.save_pretrained(other)
    state = load_file(other / "model.safetensors")
    key = next(k for k in state if k.startswith("encoder"))
    state[key] = state[key] + 1
    save_file(state, other / "model.safetensors")
    failed = subprocess.run([sys.executable, str(ROOT / "scripts" / "ship_model.py"), str(run), str(other),
                             "-o", str(tmp_path / "refused")], capture_output=True, text=True)
    assert failed.returncode != 0 and "its encoder is not the one" in failed.stderr
    assert not (tmp_path / "refused").exists()



def test_ship_model_adds_a_noisy_end_expert(tmp_path):
    sets = ["train.steps=1", "train.sample_every=0", "data.sizes=[[32, 32]]", "data.frames=[5]"]
    train("dit", load_config(ROOT / "configs" / "tiny.toml", sets), tmp_path / "run", progress=False)
    train("dit", load_config(ROOT / "configs" / "tiny.toml", [*sets, "dit.frame_position=true", "flow.noisy_share=1.0",
                                                              "flow.noisy_from=0.9"]), tmp_path / "expert", progress=False)
    # With a decoder-only VAE stage too: the expert is checked against the VAE both DiTs were trained on.
    decoder = tmp_path / "decoder-vae"
    VideoPipeline.from_pretrained(tmp_path / "run").vae.save_pretrained(decoder)
    state = load_file(decoder / "model.safetensors")
    key = next(k for k in state if k.startswith("decoder") and state[k].is_floating_point())
    state[key] = state[key] + 0.5
    save_file(state, decoder / "model.safetensors")
    out = tmp_path / "shipped"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "ship_model.py"), str(tmp_path / "run"), str(decoder),
                    "-o", str(out), "--noisy-expert", str(tmp_path / "expert"), "--boundary", "0.9"], check=True,
                   capture_output=True, text=True)
    pipe = VideoPipeline.from_pretrained(out)
    assert pipe.noisy_boundary == 0.9 and pipe.noisy_expert.config.frame_position
    assert torch.allclose(pipe.vae.state_dict()[key].float(), state[key].half().float())  # the tuned decoder
    weights = load_file(out / "noisy_expert" / "model.safetensors")
    assert all(w.dtype == torch.float16 for w in weights.values() if w.is_floating_point())
    assert pipe("a red circle moving left", num_frames=5, height=32, width=32, seed=0, progress=False).shape == (5, 32, 32, 3)
