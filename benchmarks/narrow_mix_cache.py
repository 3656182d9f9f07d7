"""A latent cache that mixes narrow motion clips into the world's: the curriculum that teaches direction.

    python benchmarks/narrow_mix_cache.py --source cache/sw15k --out cache/sw15k-narrowmix --narrow 5000
    python benchmarks/narrow_mix_cache.py --source cache/sw15k --out cache/narrow128 --narrow 128 --narrow-only

No Shapes World run before this one read the direction word ("moving left" and "moving right" gave the
same video; benchmarks/word_reading.py). Narrow clips of one object moving left, right, up or down teach
it: this cache is the source cache's items (linked, not copied) plus `--narrow` clips rendered from fresh
start positions and encoded with the same VAE (`--narrow-only`: those clips alone, a narrow world for
probes). Their captions are every *training* colour/shape/direction triple, in both sizes, on each of
`--backgrounds` ("a small cyan square moving left on a gray background"), never a held-out triple: the
held-out row measures combinations the model has not seen. (The first version of this script used
eight fixed captions, a large red square or blue circle on black, three of which, red square moving
down and blue circle moving left or up, are held-out triples; the caches and runs made with it are
marked so in benchmarks/RESULTS.md.) Everything else (data table, VAE, text encoder) is the source's,
so its cache key still matches the source's config: train with `--set data.cache="OUT"`. `--vae` names the
source's VAE folder when it is not a shipped one, `--device cuda` encodes on a GPU. Resumable;
the narrow clips are the same for the same arguments. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from patchflow.data.video_processing import to_model_video
from patchflow.models.text import TextEmbeddingCache, load_text_encoder
from patchflow.models.vae import VideoVAE
from patchflow.shapes.captions import translation_captions
from patchflow.shapes.world import BACKGROUNDS, render
from patchflow.training.cache import write_item

SIZE, FRAMES, SEED0 = 64, 17, 1000  # the narrow clips use render seeds SEED0 + i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="a cache made by `patchflow cache`")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--narrow", type=int, default=5000, help="narrow clips added (default 5000: 25%% of 20,000)")
    parser.add_argument("--narrow-only", action="store_true", help="leave the source's clips out")
    parser.add_argument("--backgrounds", nargs="+", choices=list(BACKGROUNDS), default=list(BACKGROUNDS),
                        help="the narrow clips' backgrounds (default: all)")
    parser.add_argument("--objects", nargs="+", metavar="OBJECT",
                        help='only these objects, e.g. "large red triangle" (default: every size, colour and shape)')
    parser.add_argument("--vae", type=Path,
                        help="the source cache's VAE folder (default: found by its weights among the shipped ones)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the narrow clips are encoded (default: cuda if available)")
    args = parser.parse_args()
    meta = json.loads((args.source / "meta.json").read_text())
    if meta["key"]["text"].get("encoder") is None or meta["key"]["vae"].get("weights") is None:
        raise SystemExit(f"{args.source}: a cache of a trained VAE and a named text encoder is needed")
    if args.narrow < 1:
        raise SystemExit(f"--narrow must be >= 1, got {args.narrow}")

    try:
        prompts = translation_captions(args.backgrounds, args.objects)
    except ValueError as err:
        raise SystemExit(f"--objects/--backgrounds: {err}")
    vae = _source_vae(args.source, args.vae).to(args.device)  # refused before anything is written
    latents = args.out / "latents"
    latents.mkdir(parents=True, exist_ok=True)
    if not (args.out / "text").exists():
        os.symlink((args.source / "text").resolve(), args.out / "text")
    files = [] if args.narrow_only else sorted((args.source / "latents").glob("*.safetensors"))
    for i, f in enumerate(files):
        if not (latents / f"{i:08d}.safetensors").exists():
            os.symlink(f.resolve(), latents / f"{i:08d}.safetensors")

    TextEmbeddingCache(args.out / "text", load_text_encoder(meta["key"]["text"]["encoder"])).encode(prompts + [""])
    first = len(files)
    with torch.no_grad(), tqdm(total=args.narrow, desc="narrow clips") as bar:
        for start in range(0, args.narrow, 32):
            todo = [j for j in range(start, min(start + 32, args.narrow))
                    if not (latents / f"{first + j:08d}.safetensors").exists()]
            if todo:
                video = torch.stack([to_model_video(render(prompts[j % len(prompts)], SIZE, SIZE, FRAMES,
                                                           seed=SEED0 + j)) for j in todo])
                dist = vae.encode(video.to(args.device))
                for k, j in enumerate(todo):
                    caption = prompts[j % len(prompts)]
                    write_item(latents / f"{first + j:08d}.safetensors", dist.mean[k], dist.std[k],
                               {"short": caption, "plain": caption, "detailed": caption})
            bar.update(min(32, args.narrow - start))
    (args.out / "meta.json").write_text(json.dumps({"key": meta["key"], "items": first + args.narrow}, indent=2) + "\n")
    print(f"{first} source items + {args.narrow} narrow clips in {args.out}")


def _source_vae(source: Path, folder: Path | None = None) -> VideoVAE:
    """The VAE the source cache was made with: `folder` if its weights' digest is the cache's, else
    (no folder) the shipped VAE with that digest."""
    from patchflow.training.cache import _weights_digest

    want = json.loads((source / "meta.json").read_text())["key"]["vae"]["weights"]
    if folder is not None:
        if _weights_digest(str(folder)) != want:
            raise SystemExit(f"--vae {folder}: {source} was not made with this VAE")
        return VideoVAE.from_pretrained(folder).eval()
    for folder in sorted((Path(__file__).resolve().parents[1] / "src/patchflow/pretrained").iterdir()):
        if (folder / "model.safetensors").is_file() and _weights_digest(str(folder)) == want:
            return VideoVAE.from_pretrained(folder).eval()
    raise SystemExit(f"{source} was made with a VAE that is not shipped; name it with --vae")


if __name__ == "__main__":
    main()
