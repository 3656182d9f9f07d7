"""Train the Shapes World model's recipe on a lent GPU in one short call (issue #22, item 6).

A GPU lent for ~15 minutes has the compute of ~250 hours of the project's 2-core CPU, so this script
runs the shipped model's whole recipe (docs/training.md, "The Shapes World model's recipe") in one
command and writes only what the CPU needs to judge it:

    # here, once: MiniLM (fp16, only the word rows Shapes World captions use: ~12 MB) as a package
    # the GPU machine can import (it has no network); .carry/ is git-ignored, so name it in `carry`
    python scripts/gpu_recipe.py --pack-minilm .carry/site
    # on the GPU machine (the device tool's `run`, with carry [".carry"]; PyAV must be importable
    # there, since every training run writes its final samples as mp4: the script checks first):
    PYTHONPATH=.carry/site:src python3 scripts/gpu_recipe.py --out $OUT --minutes 7
    # back here (OUT = the reply's files_at): judge it like any model, and take a run's log out of timings.json
    patchflow eval model --model OUT/final --rows heldout --count 48
    python -c "import json; [print(json.dumps(r)) for r in json.load(open('OUT/timings.json'))['logs']['video']]"

Stages, each timed and printed:
(1) the VAE: the shipped general VAE by default; `--vae DIR` for another, `--vae train` trains a Shapes
    VAE from `--vae-config`;
(2) latent caches of `--items` clips and of `--items` single frames; then, from the clips' cache, the
    noisy-end expert's three caches (benchmarks/narrow_mix_cache.py, its narrow clips encoded on the
    GPU): 2,048 clips of three large objects moving left/right/up/down, 4,020 clips of every training
    translation caption, and the clips' cache with `--items`/3 of those mixed in (the CPU's 5,000 in 15,000);
(3) the main DiT in two phases, as the CPU ladder found (benchmarks/RESULTS.md): text-to-image on the
    frames (IMAGE) for `--image-share` of its time, then text-to-video on the clips (VIDEO) warm-started
    from it; configs/shapes-world.toml with RECIPE, the phase's sets and `--set` on top; it gets the
    training time that the expert and the decoder leave;
(4) the noisy-end expert (configs/shapes-expert.toml with the main DiT's `dit.*` sets: a second DiT
    trained only at t >= flow.noisy_from) for `--expert-share` of the training time, in EXPERT's three
    stages, each warm-started from the one before and the first from the video phase: t >= 0.95 on the
    three objects, t >= 0.7 on every translation, t >= 0.7 at lr 5e-4 on the mixed cache (the CPU's
    last two 2,000-step runs in one), each for a share of the time in proportion to the CPU's
    1,500 : 3,000 : 4,000 steps, at batch 32 (`--expert-set` on top);
(5) the decoder (configs/shapes-decoder.toml: the VAE's decoder tuned on Shapes World clips, its encoder
    frozen, so the latents both DiTs learned do not change) for `--decoder-share`, at batch 32
    (`--decoder-set` on top); skipped with `--vae train` (a Shapes VAE's decoder is tuned already);
(6) the pipeline assembled by scripts/ship_model.py: the video phase's DiT, the decoder's VAE, the
    expert at boundary 0.7, defaults 20 steps, guidance 4, shift 3, in fp16.
Each phase trains for as many steps as fit its time (the rate measured on a short run first; one
probe serves the expert's stages, which share a shape), with checkpoints. An expert or decoder stage
that fails is reported (timings.json, exit status 1) and the pipeline shipped without it, so the main
DiT's minutes are not lost (if the expert's caches fail, the main DiT takes the expert's time too).

What comes back ($OUT; the device tool returns at most 8 files of 16 MiB, 2 folders down, and the
pipeline alone, ~19 MB in fp16, is 7 files, too big for one tar): OUT/final/ (model_index.json and
transformer/, noisy_expert/, vae/, each a config.json and a model.safetensors) and OUT/timings.json
(each stage's sets, steps, steps/s and seconds, and under "logs" each run's log.jsonl records).

    python scripts/gpu_recipe.py --out /tmp/gpu --tiny     # the CPU check (tests/test_gpu_recipe.py)

`--tiny` runs every stage at a tiny size on a saved, untrained tiny VAE (a few narrow clips per cache).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
import traceback
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
TINY = ["text.encoder=\"tiny\"", "dit.preset=\"tiny\"", "dit.patch_size=[1,2,2]", "data.sizes=[[32,32]]",
        "train.compile=false", "train.batch_size=4"]
TINY_VIDEO = ["data.frames=[1,9]"]  # the tiny sizes win over the phase's
# The noisy-end expert's stages (docs/training.md): name: (benchmarks/narrow_mix_cache.py's arguments for its
# cache, made from the video phase's; flow.noisy_from; the CPU recipe's steps, whose ratio shares out the
# expert's time; sets). "MIX" stands for a third of --items: the CPU mixed 5,000 narrow clips into 15,000.
THREE = ["large red triangle", "large blue square", "large green circle"]
EXPERT = {"narrow3obj": (["--narrow", "2048", "--narrow-only", "--objects", *THREE], 0.95, 1500, []),
          "narrow-transl": (["--narrow", "4020", "--narrow-only"], 0.7, 3000, []),
          "mix-transl": (["--narrow", "MIX"], 0.7, 4000, ["train.lr=5e-4"])}
EXPERT_CONFIG, DECODER_CONFIG = ROOT / "configs/shapes-expert.toml", ROOT / "configs/shapes-decoder.toml"
DECODER = ["train.batch_size=32", "data.workers=8"]  # 4x the CPU's batch; the clips are rendered by 8 processes
TINY_DECODER = ["data.sizes=[[32,32]]", "data.frames=[9]", "train.batch_size=2"]
# scripts/ship_model.py's settings for the shipped model: the expert takes the sampler's steps at t >= 0.7.
SHIP = ["--steps", "20", "--guidance", "4", "--shift", "3", "--boundary", "0.7"]


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

    if importlib.util.find_spec("av") is None:  # found now, not after the first phase's minutes
        raise SystemExit("PyAV (`av`) is not importable: every training run writes its final samples as mp4")
    work, out, timings = args.work, args.out, {}
    deadline = time.perf_counter() + 60 * args.minutes
    unpack_minilm(work)
    vae = tiny_vae(work / "tiny-vae") if args.tiny else args.vae
    if vae == "train":
        with _stage("vae", timings):
            config = load_config(args.vae_config, [f"train.steps={args.vae_steps}", "train.batch_size=32",
                                                   "train.checkpoint_every=1000000", "train.sample_every=0"])
            vae = train("vae", config, work / "vae", progress=False) / "vae"
    common, tiny = [f'vae.path="{vae}"', *RECIPE], (TINY if args.tiny else [])
    phases = {"image": [*common, *IMAGE, *tiny], "video": [*common, *VIDEO, *tiny, *(TINY_VIDEO if args.tiny else [])]}
    for name, sets in phases.items():
        with _stage(f"cache-{name}", timings):
            build_cache(load_config(args.config, sets), work / f"cache-{name}", args.items, progress=False)
        sets += [f'data.cache="{work / f"cache-{name}"}"', "train.log_every=50", "train.sample_every=0", *args.sets]
    report = {"sets": phases}
    if args.expert_share > 0 and not _optional("expert", report, narrow_caches, args, vae, timings):
        args.expert_share = 0.0  # no expert: the main DiT takes its time
    dit_start = time.perf_counter()
    budget = deadline - dit_start - args.reserve
    main_share = 1.0 - args.expert_share - args.decoder_share  # of the training time, for the main DiT
    phases["video"].append(f'train.init_from="{work / "image"}"')
    for name, share in (("image", args.image_share), ("video", 1.0)):
        with _stage(f"{name}-rate", timings):  # a short run measures the step rate for the budget
            probe_steps = 20 if args.tiny else 200
            train("dit", load_config(args.config, [*phases[name], f"train.steps={probe_steps}"]), work / f"{name}-rate",
                  progress=False)
        rate = probe_steps / timings[f"{name}-rate"]
        left = dit_start + share * main_share * budget - time.perf_counter()
        steps = args.steps or max(probe_steps, int(rate * left))
        print(f"{name}: {rate:.1f} steps/s, {left:.0f} s left: training {steps} steps", flush=True)
        with _stage(name, timings):
            train("dit", load_config(args.config, [*phases[name], f"train.steps={steps}",
                                                   f"train.checkpoint_every={max(1, steps // 5)}"]),
                  work / name, progress=False)
        report[name] = {"steps": steps, "steps_per_s": round(rate, 2)}
    expert = decoder = None
    if args.expert_share > 0:
        expert = _optional("expert", report, train_expert, args, vae, dit_start + (1 - args.decoder_share) * budget,
                           timings, report)
    if args.decoder_share > 0 and args.vae != "train":
        decoder = _optional("decoder", report, train_decoder, args, vae, dit_start + budget, timings, report)
    elif args.decoder_share > 0:
        print("decoder: skipped (--vae train: its decoder is a Shapes VAE's already)", flush=True)
        report["decoder"] = {"skipped": "--vae train"}
    with _stage("ship", timings):
        ship(work / "video", decoder, expert, out / "final", report)
    report["seconds"] = timings
    report["logs"] = {f.name: [json.loads(line) for line in (f / "log.jsonl").read_text().splitlines() if line]
                      for f in sorted(work.iterdir()) if f.name in report and (f / "log.jsonl").is_file()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "timings.json").write_text(json.dumps(report, indent=2) + "\n")
    returned = [p for p in out.rglob("*") if p.is_file()]
    if len(returned) > 8 or any(len(p.relative_to(out).parts) > 3 or p.stat().st_size > 16 * 2**20 for p in returned):
        print(f"warning: {len(returned)} files in {out}: the device tool returns at most 8, of 16 MiB, 2 folders down")
    return report


def train_expert(args, vae: str | Path, until: float, timings: dict, report: dict) -> Path:
    """The noisy-end expert's EXPERT stages on their caches, the first warm-started from the video phase,
    sharing the time until `until` as the CPU's steps did; returns the last stage's run."""
    from patchflow.training.config import load_config
    from patchflow.training.loop import train

    work, stages, init = args.work, {}, args.work / "video"
    dit = [s for s in (*RECIPE, *args.sets) if s.startswith("dit.")]  # the main DiT's shape: the warm start needs it
    tiny = [*TINY, *TINY_VIDEO] if args.tiny else []  # the video phase's data: the narrow caches carry its key
    for name, (_, noisy_from, _, sets) in EXPERT.items():
        stages[f"expert-{name}"] = [f'vae.path="{vae}"', *dit, *tiny, f'data.cache="{work / f"cache-{name}"}"',
                                    f"flow.noisy_from={noisy_from}", f'train.init_from="{init}"', "train.log_every=50",
                                    "train.sample_every=0", *sets, *args.expert_sets]
        init = work / f"expert-{name}"
    report["sets"].update(stages)
    probe_steps, first = (20 if args.tiny else 200), next(iter(stages))
    with _stage("expert-rate", timings):  # one probe for all: the stages' clips have one shape
        train("dit", load_config(EXPERT_CONFIG, [*stages[first], f"train.steps={probe_steps}"]), work / "expert-rate",
              progress=False)
    rate, start = probe_steps / timings["expert-rate"], time.perf_counter()
    total, end = sum(cpu_steps for _, _, cpu_steps, _ in EXPERT.values()), start
    for (name, sets), (_, _, cpu_steps, _) in zip(stages.items(), EXPERT.values()):
        end += cpu_steps / total * (until - start)
        left = end - time.perf_counter()
        steps = args.steps or max(probe_steps, int(rate * left))
        print(f"{name}: {rate:.1f} steps/s, {left:.0f} s left: training {steps} steps", flush=True)
        with _stage(name, timings):
            train("dit", load_config(EXPERT_CONFIG, [*sets, f"train.steps={steps}",
                                                     f"train.checkpoint_every={max(1, steps // 5)}"]),
                  work / name, progress=False)
        report[name] = {"steps": steps, "steps_per_s": round(rate, 2)}
    return work / name


def train_decoder(args, vae: str | Path, until: float, timings: dict, report: dict) -> Path:
    """The VAE's decoder tuned on Shapes World clips with its encoder frozen (configs/shapes-decoder.toml)
    until `until`; returns its run."""
    from patchflow.training.config import load_config
    from patchflow.training.loop import train

    sets = [f'vae.path="{vae}"', "train.sample_every=0", *(TINY_DECODER if args.tiny else DECODER),
            *args.decoder_sets]
    report["sets"]["decoder"] = sets
    probe_steps = 2 if args.tiny else 50
    with _stage("decoder-rate", timings):
        train("vae", load_config(DECODER_CONFIG, [*sets, f"train.steps={probe_steps}"]), args.work / "decoder-rate",
              progress=False)
    rate = probe_steps / timings["decoder-rate"]
    left = until - time.perf_counter()
    steps = args.steps or max(probe_steps, int(rate * left))
    print(f"decoder: {rate:.1f} steps/s, {left:.0f} s left: training {steps} steps", flush=True)
    with _stage("decoder", timings):
        train("vae", load_config(DECODER_CONFIG, [*sets, f"train.steps={steps}",
                                                  f"train.checkpoint_every={max(1, steps // 5)}"]),
              args.work / "decoder", progress=False)
    report["decoder"] = {"steps": steps, "steps_per_s": round(rate, 2)}
    return args.work / "decoder"


def ship(dit: Path, decoder: Path | None, expert: Path | None, final: Path, report: dict) -> None:
    """scripts/ship_model.py on the runs into `final`; the main DiT alone (reported) if it refuses the others."""
    script = _script("scripts/ship_model.py")
    try:
        _main_of(script, [str(dit), *([str(decoder)] if decoder else []), "-o", str(final), *SHIP,
                          *(["--noisy-expert", str(expert)] if expert else [])])
    except (Exception, SystemExit) as err:  # ship_model refuses with SystemExit
        if decoder is None and expert is None:
            raise
        print(f"ship: failed ({err!r}); shipping the main DiT alone", flush=True)
        report["ship"] = {"error": repr(err)}
        _main_of(script, [str(dit), "-o", str(final), *SHIP])


def _optional(name: str, report: dict, stage, *args):
    """stage(*args), or None with the error in report[name]: the pipeline then ships without that part."""
    try:
        return stage(*args)
    except (Exception, SystemExit) as err:  # any failure, a script's refusal too: the main DiT must come back
        traceback.print_exc()
        print(f"{name}: failed ({err!r}); the pipeline ships without it", flush=True)
        report[name] = {"error": repr(err)}
        return None


def tiny_vae(folder: Path) -> Path:
    """An untrained tiny VAE saved in `folder`: the tiny run's caches then name their VAE's weights, as
    benchmarks/narrow_mix_cache.py requires, and the decoder stage has one to tune."""
    import torch

    from patchflow.models.vae import VAE_PRESETS, VideoVAE

    torch.manual_seed(0)
    VideoVAE(VAE_PRESETS["tiny"]()).save_pretrained(folder)
    return folder


def narrow_caches(args, vae: str | Path, timings: dict) -> bool:
    """The expert stages' caches (EXPERT), each made from the video phase's cache by
    benchmarks/narrow_mix_cache.py, its narrow clips encoded by `vae` on the GPU when there is one."""
    script = _script("benchmarks/narrow_mix_cache.py")
    for name, (narrow, *_) in EXPERT.items():
        with _stage(f"cache-{name}", timings):
            _main_of(script, ["--source", str(args.work / "cache-video"), "--out", str(args.work / f"cache-{name}"),
                              "--vae", str(vae), *_narrow_args(narrow, args)])
    return True


def _narrow_args(narrow: list[str], args) -> list[str]:
    """EXPERT's narrow_mix_cache arguments with its counts: "MIX" a third of --items; a few clips when tiny."""
    i = narrow.index("--narrow") + 1
    count = "8" if args.tiny else str(max(1, args.items // 3)) if narrow[i] == "MIX" else narrow[i]
    return [*narrow[:i], count, *narrow[i + 1:]]


def _script(path: str):
    """A script of the repository (scripts/ and benchmarks/ are no packages) as a module."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main_of(script, argv: list[str]) -> None:
    """A script's main(), which parses sys.argv, on `argv`, in this process (the unpacked MiniLM is on sys.path)."""
    saved, sys.argv = sys.argv, [script.__file__, *argv]
    try:
        script.main()
    finally:
        sys.argv = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where the pipeline and the timings go ($OUT)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-recipe"), help="runs and caches (not returned)")
    parser.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget for all stages (default 7)")
    parser.add_argument("--reserve", type=float, default=45.0, help="seconds kept for saving (default 45)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/shapes-world.toml")
    parser.add_argument("--vae-config", type=Path, default=ROOT / "configs/shapes-vae-4x4.toml")
    parser.add_argument("--vae-steps", type=int, default=900, help="VAE steps at batch 32 (default 900)")
    parser.add_argument("--vae", default=str(GENERAL_VAE),
                        help="the VAE folder (default: the shipped general VAE), or 'train' for a Shapes VAE")
    parser.add_argument("--items", type=int, default=30000, help="clips (and frames) per latent cache (default 30000)")
    parser.add_argument("--image-share", type=float, default=0.4,
                        help="share of the main DiT's time for the text-to-image phase (default 0.4)")
    parser.add_argument("--expert-share", type=float, default=0.25,
                        help="share of the training time for the noisy-end expert's stages (default 0.25; 0: none)")
    parser.add_argument("--decoder-share", type=float, default=0.1,
                        help="share of the training time for the decoder stage (default 0.1; 0: none)")
    parser.add_argument("--steps", type=int, help="steps per phase and stage (default: as many as the budget allows)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override the main DiT's recipe (repeatable; its dit.* sets apply to the expert too)")
    parser.add_argument("--expert-set", dest="expert_sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override every expert stage's config (repeatable)")
    parser.add_argument("--decoder-set", dest="decoder_sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override the decoder stage's config (repeatable)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes: the CPU check")
    parser.add_argument("--pack-minilm", type=Path, metavar="DIR", help="only write the carried MiniLM package into DIR")
    args = parser.parse_args(argv)
    if args.pack_minilm:
        pack_minilm(args.pack_minilm)
        return 0
    if args.out is None:
        parser.error("--out is required")
    if not (0 <= args.expert_share and 0 <= args.decoder_share and args.expert_share + args.decoder_share < 1):
        parser.error(f"--expert-share {args.expert_share} and --decoder-share {args.decoder_share} must be >= 0 "
                     "and leave the main DiT some time (sum < 1)")
    if args.tiny:
        args.items, args.minutes = min(args.items, 16), min(args.minutes, 2.0)
    report = run(args)
    print(json.dumps({k: v for k, v in report.items() if k != "logs"}))
    return 1 if any("error" in v for v in report.values() if isinstance(v, dict)) else 0


if __name__ == "__main__":
    sys.exit(main())
