"""Assemble the shipped Shapes World model from the recipe's runs (docs/training.md).

    python scripts/ship_model.py runs/shapes-world [runs/shapes-vae-decoder] \
        -o src/patchflow/pretrained/shapes-world [--steps 20 --guidance 4 --shift 3 --guidance-interval 0.3 1] \
        [--noisy-expert runs/noisy-expert --boundary 0.95]

Takes the DiT run's pipeline (its transformer, text encoder, flow settings, VAE), swaps in the VAE of
a decoder-only stage when one is named (refused unless its encoder and latent statistics are the ones
the DiT was trained on: bit for bit), marks the model's world as "shapes" (so prompts outside it are reported), sets the
default sampler settings chosen by benchmarks/bench_sampler.py, adds a noisy-end expert when one is
named (a DiT run trained only at t >= the boundary, on the same VAE latents and text encoder: refused
otherwise), and saves everything in fp16.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from patchflow.pipelines.pipeline import VideoPipeline
from patchflow.models.vae import VideoVAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dit_run", type=Path, help="DiT training run (or pipeline folder)")
    parser.add_argument("vae_run", type=Path, nargs="?",
                        help="decoder-only VAE run (or its final/vae folder); default: the DiT run's own VAE")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="pipeline folder to write (replaced, but for its README.md: the model card)")
    parser.add_argument("--steps", type=int, help="default num_inference_steps")
    parser.add_argument("--guidance", type=float, help="default guidance_scale")
    parser.add_argument("--shift", type=float, help="default sampler time shift (benchmarks/bench_sampler.py --shifts)")
    parser.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"),
                        help="default guidance interval (benchmarks/guidance_probe.py --cfg-interval)")
    parser.add_argument("--noisy-expert", type=Path, help="DiT run that takes the sampler steps at t >= --boundary")
    parser.add_argument("--boundary", type=float, default=0.95, help="the noisy-end expert's boundary (default 0.95)")
    args = parser.parse_args()

    pipe = VideoPipeline.from_pretrained(args.dit_run)
    pipe.world = "shapes"
    if args.noisy_expert is not None:  # checked against the VAE both DiTs were trained on, before any swap
        expert = VideoPipeline.from_pretrained(args.noisy_expert)
        theirs, mine = expert.vae.state_dict(), pipe.vae.state_dict()
        same_vae = theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in mine)
        if expert.text_encoder_spec != pipe.text_encoder_spec or not same_vae:
            raise SystemExit(f"{args.noisy_expert}: trained on another VAE or text encoder than {args.dit_run}")
        pipe.with_noisy_expert(expert.transformer, args.boundary)
    if args.vae_run is not None:
        pipe.vae = decoder_stage_vae(pipe, args.vae_run)
    if args.steps is not None:
        pipe.defaults["num_inference_steps"] = args.steps
    if args.guidance is not None:
        pipe.defaults["guidance_scale"] = args.guidance
    if args.shift is not None:
        pipe.defaults["shift"] = args.shift
    if args.guidance_interval is not None:
        pipe.defaults["guidance_interval"] = tuple(args.guidance_interval)
    card = args.output / "README.md"  # the model card is written by hand: kept across a re-ship
    kept = card.read_text() if card.is_file() else None
    if args.output.exists():
        shutil.rmtree(args.output)
    pipe.save_pretrained(args.output, dtype=torch.float16)
    if kept is not None:
        card.write_text(kept)
    size = sum(f.stat().st_size for f in args.output.rglob("*") if f.is_file())
    dit_params = sum(p.numel() for m in (pipe.transformer, pipe.noisy_expert) if m is not None for p in m.parameters())
    print(f"wrote {args.output}: {size / 2**20:.1f} MiB (fp16); DiT {dit_params / 1e6:.1f}M parameters, "
          f"VAE {pipe.vae.num_parameters() / 1e6:.2f}M; defaults {pipe.defaults}")


def decoder_stage_vae(pipe: VideoPipeline, vae_run: Path) -> VideoVAE:
    """The VAE of a decoder-only run, refused unless its encoder and statistics are the pipeline's."""
    vae_dir = vae_run / "final" / "vae" if (vae_run / "final" / "vae").is_dir() else vae_run
    vae = VideoVAE.from_pretrained(vae_dir)
    old, new = pipe.vae.state_dict(), vae.state_dict()
    if old.keys() != new.keys() or any(not torch.equal(old[k], new[k]) for k in old if k.startswith("encoder")):
        raise SystemExit(f"{vae_dir}: its encoder is not the one the DiT was trained on")
    stats = ("latent_mean", "latent_std", "latent_whiten")
    if any(getattr(pipe.vae.config, k) != getattr(vae.config, k) for k in stats):
        raise SystemExit(f"{vae_dir}: its latent statistics differ from the DiT's VAE")
    return vae


if __name__ == "__main__":
    main()
