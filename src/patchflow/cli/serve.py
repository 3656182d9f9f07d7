"""`patchflow serve`: load the model once and serve the web page and HTTP API (serving/)."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from patchflow.serving.inputs import Limits
from patchflow.serving.server import create_app


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `patchflow serve` options to `parser` (run it with `run_serve`)."""
    d = Limits()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                                                            "machine only; the API has no authentication)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--model", help="model folder or training run (default: the shipped model)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    limits = parser.add_argument_group("limits (larger requests are refused with 413, a full queue with 429)")
    limits.add_argument("--max-frames", type=int, default=d.max_frames,
                        help=f"frames per video (default {d.max_frames})")
    limits.add_argument("--max-size", type=int, default=d.max_size,
                        help=f"height and width in pixels (default {d.max_size})")
    limits.add_argument("--max-steps", type=int, default=d.max_steps,
                        help=f"sampler steps (default {d.max_steps})")
    limits.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb,
                        help=f"request body size, uploads included (default {d.max_upload_mb:g})")
    limits.add_argument("--max-queue", type=int, default=d.max_queue,
                        help=f"jobs waiting or running at once (default {d.max_queue})")
    limits.add_argument("--max-results", type=int, default=d.max_results,
                        help=f"finished videos kept in memory (default {d.max_results})")
    return parser


def run_serve(args: argparse.Namespace) -> int:
    """Load the model once and serve the page and API until interrupted (args from `add_serve_arguments`)."""
    limits = Limits(max_frames=args.max_frames, max_size=args.max_size, max_steps=args.max_steps,
                    max_upload_mb=args.max_upload_mb, max_queue=args.max_queue, max_results=args.max_results)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart, for form uploads)
        import uvicorn
    except ImportError as e:
        raise ImportError(f"patchflow serve needs the serve extra ({e.name} is missing): "
                          "pip install 'patchflow[serve]'") from None
    import torch

    from patchflow.pipelines.pipeline import VideoPipeline

    if not _is_loopback(args.host):
        print(f"patchflow serve: warning: listening on {args.host}, reachable from other machines; the API has "
              "no authentication", file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = VideoPipeline.from_pretrained(args.model, device=device)
    d = pipe.defaults
    over = [f"{k} {d[k]} > {v}" for k, v in (("num_frames", limits.max_frames), ("height", limits.max_size),
                                             ("width", limits.max_size), ("num_inference_steps", limits.max_steps))
            if d[k] > v]
    if over:
        print(f"patchflow serve: warning: the model's defaults are over the limits ({', '.join(over)}); "
              "requests must set those fields", file=sys.stderr)
    app = create_app(pipe, limits)
    print(f"patchflow serve: model loaded on {device}; open http://{args.host}:{args.port}/ (Ctrl+C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("serve", help="web page and HTTP API for generation (pip install 'patchflow[serve]')",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  patchflow serve --port 7860   # then open http://127.0.0.1:7860")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)

