"""Generation speed: CLI cold start and per-task wall time, on a model the size of the shipped one.

    python benchmarks/bench_generate.py [--preset mini] [--vae 4x4x4x8] [--text minilm] [--steps 30]

Builds a pipeline folder with random weights (speed does not depend on training): DiT `--preset`,
VAE `--vae`, text encoder `--text`, defaults 17 frames at 64x64. Then measures
  1. cold start: a fresh `python` process that imports patchflow.cli.generate, loads the folder,
     generates one video with the model's defaults and writes an .mp4 (what `patchflow generate` does);
  2. in-process wall time per video for each task, and for a 3x-long video (windows).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from patchflow.models.dit import DiT, dit_config
from patchflow.pipelines.pipeline import VideoPipeline
from patchflow.models.text import load_text_encoder
from patchflow.models.vae import VAE_PRESETS, VideoVAE

COLD = """
import time, sys
t0 = time.perf_counter()
import argparse
from patchflow.cli.generate import add_generate_arguments, run_generate
args = add_generate_arguments(argparse.ArgumentParser()).parse_args(sys.argv[1:])
run_generate(args)
print("IN_PROCESS", time.perf_counter() - t0)
"""


def build(folder: Path, preset: str, vae_preset: str, text: str, steps: int) -> VideoPipeline:
    torch.manual_seed(0)
    encoder = load_text_encoder(text)
    vae = VideoVAE(VAE_PRESETS[vae_preset]())
    dit = DiT(dit_config(preset, in_channels=vae.config.latent_channels, text_dim=encoder.dim))
    with torch.no_grad():  # non-zero output layers: the sampler does real work either way
        for p in dit.parameters():
            p.normal_(0.0, 0.02)
    pipe = VideoPipeline(dit, vae, encoder, defaults={"num_inference_steps": steps})
    pipe.save_pretrained(folder)
    return pipe


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--vae", default="4x4x4x8")
    parser.add_argument("--text", default="minilm")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        pipe = build(folder, args.preset, args.vae, args.text, args.steps)
        print(f"model: DiT {args.preset} ({pipe.transformer.num_parameters() / 1e6:.1f}M), VAE {args.vae} "
              f"({pipe.vae.num_parameters() / 1e6:.2f}M), text {args.text}; defaults "
              f"{json.dumps({k: pipe.defaults[k] for k in ('num_frames', 'height', 'width', 'num_inference_steps', 'guidance_scale')})}")
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", COLD, "placeholder prompt: a red circle moving right",
                              "--model", str(folder), "-o", str(Path(tmp) / "cold.mp4"), "--device", "cpu"],
                             capture_output=True, text=True, check=True)
        cold = time.perf_counter() - t0
        load = run.stdout.split("model load ")[1].split("s")[0]
        print(f"cold start (new process -> .mp4 written): {cold:.2f} s; of it model load {load} s", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import patchflow.cli.generate, patchflow.pipelines.pipeline"], check=True)
        print(f"  python + imports alone: {time.perf_counter() - t0:.2f} s")

        pipe(prompt="warm-up", num_frames=1, num_inference_steps=1, progress=False)
        clip = np.random.RandomState(0).randint(0, 256, (9, 64, 64, 3), dtype=np.uint8)
        prompt = "a small red circle moving right on a black background"
        cases = {
            "text-to-video 17f": dict(),
            "text-to-image 1f": dict(num_frames=1),
            "image-to-video 17f": dict(image=clip[0]),
            "extend forward 9->33f (2 windows)": dict(video=clip, extend="forward", num_frames=33),
            "loop 17f (2 passes)": dict(loop=True),
            "edit strength 0.5 9f": dict(video=clip, strength=0.5),
            "long 49f (3x, 5 windows)": dict(num_frames=49),
            "batch of 4, 17f (one pass)": dict(prompt=[prompt] * 4),
        }
        for name, kwargs in cases.items():
            kwargs = {"prompt": prompt, "seed": 0, "progress": False, **kwargs}
            seconds = timed(lambda: pipe(**kwargs))
            print(f"  {name:<36} {seconds:6.2f} s", flush=True)


if __name__ == "__main__":
    main()
