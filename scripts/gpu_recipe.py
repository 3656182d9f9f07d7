"""Train the Shapes World recipe on a lent GPU in one short call (issue #22, item 6).

A GPU lent for ~15 minutes has the compute of ~250 hours of the project's 2-core CPU, so this
script does the whole recipe in one command and writes only what the CPU needs to judge it:

    # here, once: MiniLM (fp16, only the word rows Shapes World captions use: ~12 MB) as a package
    # the GPU machine can import (it has no network); .carry/ is git-ignored, so name it in `carry`
    python scripts/gpu_recipe.py --pack-minilm .carry/site
    # on the GPU machine (the device tool's `run`, with carry [".carry"]):
    PYTHONPATH=.carry/site:src python3 scripts/gpu_recipe.py --out $OUT --minutes 7
    # back here: judge it like any run
    patchflow eval model --model OUT/final --rows heldout --count 48 --steps 20 --guidance 4

Stages, each timed and printed: (1) the VAE (the shipped general VAE by default; `--vae DIR` for
another, `--vae train` trains a Shapes VAE from `--vae-config`), (2) latent caches of `--items` clips
and of `--items` single frames, (3) the DiT in two phases, as the CPU ladder found (benchmarks/RESULTS.md):
text-to-image on the frames (IMAGE) for `--image-share` of the DiT's time, then text-to-video on the
clips (VIDEO) warm-started from it, each for as many steps as fit its time (the rate measured on a
short run first), with checkpoints; configs/shapes-world.toml with RECIPE, the phase's sets and
`--set` on top, (4) OUT/final (the pipeline: transformer, VAE, model_index.json), OUT/log.jsonl (the
video phase), OUT/image-log.jsonl and OUT/timings.json: at most 8 files, as the device tool returns them.

    python scripts/gpu_recipe.py --out /tmp/gpu --tiny     # the CPU check (tests/test_gpu_recipe.py)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The best rungs of the probe ladder so far (benchmarks/RESULTS.md, "The Shapes World probe ladder"):
# width 128 at lr 1.5e-3 and batch 128; text-to-image first, then video warm-started from it.
RECIPE = ["dit.hidden_size=128", "dit.patch_size=[1,2,2]", "train.lr=1.5e-3", "train.batch_size=128"]
IMAGE = ["data.sizes=[[64,64]]", "data.frames=[1]", "tasks.text_to_video=1", "tasks.image_to_video=0",
         "tasks.extend_forward=0", "tasks.extend_backward=0", "tasks.connect=0"]
VIDEO = ["tasks.text_to_video=0.8", "tasks.image_to_video=0.05", "tasks.extend_forward=0.05",
         "tasks.extend_backward=0.05", "tasks.connect=0.05", "flow.frame_noise_share=0.5"]
GENERAL_VAE = ROOT / "src/patchflow/pretrained/vae-general"
TINY = ["vae.path=\"\"", "vae.preset=\"tiny\"", "text.encoder=\"tiny\"", "dit.preset=\"tiny\"", "dit.patch_size=[1,2,2]",
        "data.sizes=[[32,32]]", "train.compile=false", "train.batch_size=4"]
TINY_VIDEO = ["data.frames=[1,9]"]  # the tiny sizes win over the phase's


WORDS = "embeddings.word_embeddings.weight"


def pack_minilm(target: Path, captions: int = 20000) -> None:
    """Write all-MiniLM-L6-v2 as an importable package in fp16 with only the word-embedding rows that
    Shapes World captions use (~12 MB instead of 91: the device tool carries 64 MiB with the tree).
    `unpack_minilm` rebuilds the full matrix there (unused rows zero: they are never looked up)."""
    import random

    import tokenizers
    import torch
    from safetensors.torch import load_file, save_file

    from patchflow.models.text import MINILM_PACKAGE, minilm_path
    from patchflow.shapes.captions import caption_vocabulary, captions as scene_captions
    from patchflow.shapes.world import sample_scene

    source, folder = minilm_path(), target / MINILM_PACKAGE / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (target / MINILM_PACKAGE / "__init__.py").write_text('"""all-MiniLM-L6-v2 in fp16 with the Shapes World\'s '
                                                         'word rows only: run scripts/gpu_recipe.py, which unpacks it."""\n')
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    tokenizer = tokenizers.Tokenizer.from_file(str(source / "tokenizer.json"))
    rng = random.Random(0)
    texts = [c for i in range(captions) for c in scene_captions(sample_scene(rng, split="all"), seed=i).values()]
    texts += sorted(caption_vocabulary()) + [""]
    ids = sorted({i for enc in tokenizer.encode_batch(texts) for i in enc.ids})
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(source / "model.safetensors").items()}
    keep = torch.tensor(ids)
    state[WORDS + ".rows"], state[WORDS + ".ids"] = state[WORDS][keep].clone(), keep
    state[WORDS + ".shape"] = torch.tensor(state.pop(WORDS).shape)
    save_file(state, folder / "model.safetensors")
    print(f"wrote {folder}: {len(ids)} of {int(state[WORDS + '.shape'][0])} word rows, "
          f"{sum(f.stat().st_size for f in folder.iterdir()) / 1e6:.1f} MB")


def unpack_minilm(work: Path) -> None:
    """If the importable MiniLM is a `pack_minilm` package, write it whole under `work` and import it from there."""
    import importlib
    import importlib.util

    import torch
    from safetensors.torch import load_file, save_file

    from patchflow.models.text import MINILM_PACKAGE

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        return  # load_text_encoder names what is missing
    packed = Path(spec.origin).parent / "model"
    state = load_file(packed / "model.safetensors")
    if WORDS + ".rows" not in state:
        return  # the real package
    site = work / "minilm-site"
    folder = site / MINILM_PACKAGE / "model"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(spec.origin), site / MINILM_PACKAGE / "__init__.py")
    for f in packed.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, folder / f.name)
    full = torch.zeros(*state.pop(WORDS + ".shape").tolist(), dtype=torch.float32)
    full[state.pop(WORDS + ".ids")] = state.pop(WORDS + ".rows").float()
    save_file({WORDS: full, **{k: v.float() if v.is_floating_point() else v for k, v in state.items()}},
              folder / "model.safetensors")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    print(f"unpacked MiniLM into {site}", flush=True)


def _stage(name: str, timings: dict):
    class Timer:
        def __enter__(self):
            self.t0 = time.perf_counter()
            print(f"== {name}", flush=True)

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.t0, 1)
            print(f"== {name}: {timings[name]:.0f} s", flush=True)
    return Timer()


def run(args) -> dict:
    from patchflow.training.cache import build_cache
    from patchflow.training.config import load_config
    from patchflow.training.loop import train

    work, out, timings = args.work, args.out, {}
    deadline = time.perf_counter() + 60 * args.minutes
    unpack_minilm(work)
    vae = None if args.tiny else args.vae
    if vae == "train":
        with _stage("vae", timings):
            config = load_config(args.vae_config, [f"train.steps={args.vae_steps}", "train.batch_size=32",
                                                   "train.checkpoint_every=1000000", "train.sample_every=0"])
            vae = train("vae", config, work / "vae", progress=False) / "vae"
    common, tiny = [*([f'vae.path="{vae}"'] if vae else []), *RECIPE], (TINY if args.tiny else [])
    phases = {"image": [*common, *IMAGE, *tiny], "video": [*common, *VIDEO, *tiny, *(TINY_VIDEO if args.tiny else [])]}
    for name, sets in phases.items():
        with _stage(f"cache-{name}", timings):
            build_cache(load_config(args.config, sets), work / f"cache-{name}", args.items, progress=False)
        sets += [f'data.cache="{work / f"cache-{name}"}"', "train.log_every=50", "train.sample_every=0", *args.sets]
    dit_start = time.perf_counter()
    budget = deadline - dit_start - args.reserve
    report = {"sets": phases}
    phases["video"].append(f'train.init_from="{work / "image"}"')
    for name, share in (("image", args.image_share), ("video", 1.0)):
        with _stage(f"{name}-rate", timings):  # a short run measures the step rate for the budget
            probe_steps = 20 if args.tiny else 200
            train("dit", load_config(args.config, [*phases[name], f"train.steps={probe_steps}"]), work / f"{name}-rate",
                  progress=False)
        rate = probe_steps / timings[f"{name}-rate"]
        left = dit_start + share * budget - time.perf_counter()
        steps = args.steps or max(probe_steps, int(rate * left))
        print(f"{name}: {rate:.1f} steps/s, {left:.0f} s left: training {steps} steps", flush=True)
        with _stage(name, timings):
            final = train("dit", load_config(args.config, [*phases[name], f"train.steps={steps}",
                                                          f"train.checkpoint_every={max(1, steps // 5)}"]),
                          work / name, progress=False)
        report[name] = {"steps": steps, "steps_per_s": round(rate, 2)}
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(final, out / "final", dirs_exist_ok=True)
    shutil.copy(work / "video" / "log.jsonl", out / "log.jsonl")
    shutil.copy(work / "image" / "log.jsonl", out / "image-log.jsonl")
    report["seconds"] = timings
    (out / "timings.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where the pipeline, its log and the timings go ($OUT)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-recipe"), help="runs and cache (not returned)")
    parser.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget for all stages (default 7)")
    parser.add_argument("--reserve", type=float, default=45.0, help="seconds kept for saving (default 45)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/shapes-world.toml")
    parser.add_argument("--vae-config", type=Path, default=ROOT / "configs/shapes-vae-4x4.toml")
    parser.add_argument("--vae-steps", type=int, default=900, help="VAE steps at batch 32 (default 900)")
    parser.add_argument("--vae", default=str(GENERAL_VAE),
                        help="the VAE folder (default: the shipped general VAE), or 'train' for a Shapes VAE")
    parser.add_argument("--items", type=int, default=30000, help="clips (and frames) per latent cache (default 30000)")
    parser.add_argument("--image-share", type=float, default=0.4,
                        help="share of the DiT's time for the text-to-image phase (default 0.4)")
    parser.add_argument("--steps", type=int, help="DiT steps per phase (default: as many as the budget allows)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override the recipe (repeatable)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes: the CPU check")
    parser.add_argument("--pack-minilm", type=Path, metavar="DIR", help="only write the carried MiniLM package into DIR")
    args = parser.parse_args(argv)
    if args.pack_minilm:
        pack_minilm(args.pack_minilm)
        return 0
    if args.out is None:
        parser.error("--out is required")
    if args.tiny:
        args.items, args.minutes = min(args.items, 16), min(args.minutes, 2.0)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
