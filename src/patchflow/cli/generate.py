"""`patchflow generate`: prompts (and images or clips) to video files.

    patchflow generate "a red circle moving right on a black background" -o red.mp4
    patchflow generate "a blue square" --image start.png --frames 33 -o out.gif
    patchflow generate "..." --video clip.mp4 --extend forward --frames 49 -o longer.mp4
    patchflow generate "..." --video a.mp4 --end-video b.mp4 --frames 33 -o bridge.mp4
    patchflow generate "..." --loop -o loop.gif
    patchflow generate "a green triangle moving left" --video clip.mp4 --strength 0.6 -o edited.mp4
    patchflow generate --batch-prompts prompts.txt -o outputs/

The parser is built by `add_generate_arguments`; heavy imports happen in `run_generate`, so
`patchflow --help` stays fast. Unset options come from the model's `defaults`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

OUTPUT_SUFFIXES = (".mp4", ".webm", ".gif", ".png")


def add_generate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `patchflow generate` options to `parser` (run it with `run_generate`)."""
    parser.add_argument("prompt", nargs="?", help="what to generate (Shapes World prompts are expanded by rules)")
    parser.add_argument("-o", "--output", help="OUT.mp4|.webm|.gif|.png or a folder DIR/ (default outputs/)")
    task = parser.add_argument_group("size and sampling (defaults: the model's)")
    task.add_argument("--frames", type=int, help="frame count, 1 + ft*k (rounded to the nearest with a note); "
                                                 "1 = an image; above the trained length = a long video")
    task.add_argument("--height", type=int, help="pixels, a multiple of the VAE factor x patch")
    task.add_argument("--width", type=int, help="pixels, a multiple of the VAE factor x patch")
    task.add_argument("--steps", type=int, help="sampler steps")
    task.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = off)")
    task.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"),
                      help="guide only the steps that start at a noise level t in [LO, HI] "
                           "(1 = pure noise; the shipped model: 0.3 1, its last steps unguided)")
    task.add_argument("--negative-prompt", help="what to steer away from (the uncond branch of guidance)")
    task.add_argument("--seed", type=int, default=0, help="noise seed; prompt i of a batch uses seed + i (default 0)")
    task.add_argument("--sampler", choices=("euler", "heun"))
    task.add_argument("--no-expand", action="store_true", help="use prompts as written (no prompt expansion)")
    cond = parser.add_argument_group("conditioning (tasks)")
    cond.add_argument("--image", help="image-to-video: an image file kept at frame --image-frame")
    cond.add_argument("--image-frame", type=int, default=0, metavar="K", help="frame of --image (default 0)")
    cond.add_argument("--video", help="a clip to extend (--extend), connect from (--end-video) or edit (--strength)")
    cond.add_argument("--extend", choices=("forward", "backward"), help="keep --video at the start / the end")
    cond.add_argument("--end-video", help="connect: generate a transition from --video into this clip")
    cond.add_argument("--loop", action="store_true", help="a seamless loop: the last frame leads into the first")
    cond.add_argument("--strength", type=float, help="edit --video (SDEdit): 0 keeps it, 1 ignores it")
    run = parser.add_argument_group("model and output")
    run.add_argument("--model", help="model folder or training run (default: the shipped model)")
    run.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    run.add_argument("--batch-prompts", metavar="FILE", help="one prompt per line (# comments); written to -o DIR/")
    run.add_argument("--batch-size", type=int, default=4, help="prompts denoised together (default 4)")
    run.add_argument("--fps", type=float, help="frame rate of written files (default: the model's)")
    return parser


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = [args.prompt] if args.prompt is not None else []
    if args.batch_prompts:
        path = Path(args.batch_prompts)
        if not path.is_file():
            raise FileNotFoundError(f"--batch-prompts: no such file: {path}")
        lines = [line.strip() for line in path.read_text().splitlines()]
        prompts += [line for line in lines if line and not line.startswith("#")]
        if not prompts:
            raise ValueError(f"--batch-prompts {path} holds no prompts (one per line, # starts a comment)")
    if not prompts:
        raise ValueError("give a PROMPT or --batch-prompts FILE")
    return prompts


def _slug(prompt: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].rstrip("-") or "video"


def output_paths(output: str | None, prompts: list[str], seed: int, frames: int) -> list[Path]:
    """Where each prompt's video goes: a file (numbered for several prompts) or DIR/<prompt-slug>-s<seed>.ext."""
    ext = ".png" if frames == 1 else ".mp4"
    is_dir = output is None or output.endswith(("/", "\\")) or Path(output).is_dir() or not Path(output).suffix
    if is_dir:
        folder = Path(output or "outputs")
        names, paths = set(), []
        for i, p in enumerate(prompts):
            name = f"{_slug(p)}-s{seed + i}"
            name = name if name not in names else f"{name}-{i}"
            names.add(name)
            paths.append(folder / f"{name}{ext}")
        return paths
    path = Path(output)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"-o {output}: use one of {OUTPUT_SUFFIXES} or a folder DIR/")
    if path.suffix.lower() == ".png" and frames != 1:
        raise ValueError(f"-o {output}: a .png holds one frame, this makes {frames}; use .mp4/.gif/.webm")
    if len(prompts) == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i:03d}{path.suffix}") for i in range(len(prompts))]


def run_generate(args: argparse.Namespace) -> int:
    """Generate the videos of `args` (from `add_generate_arguments`), write them and print where and how long."""
    start = time.perf_counter()
    prompts = _read_prompts(args)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    import torch

    from patchflow.data.io import write_video
    from patchflow.pipelines.pipeline import VideoPipeline
    from patchflow.pipelines.prompts import unknown_words_note

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = VideoPipeline.from_pretrained(args.model, device=device)
    loaded = time.perf_counter()
    kwargs = dict(num_frames=args.frames, height=args.height, width=args.width, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, guidance_interval=args.guidance_interval,
                  negative_prompt=args.negative_prompt, image=args.image,
                  image_frame=args.image_frame, video=args.video, extend=args.extend, end_video=args.end_video,
                  loop=args.loop, strength=args.strength, sampler=args.sampler, expand_prompt=not args.no_expand)
    # Every batch is checked (and its media read) before the first is generated: a bad argument fails fast.
    requests = [pipe.check_inputs(prompts[first:first + args.batch_size], seed=args.seed + first,  # prompt i: seed + i
                                  round_frames=True, **kwargs)
                for first in range(0, len(prompts), args.batch_size)]
    for note in requests[0].notes:  # the same for every batch
        print(f"patchflow generate: note: {note}", file=sys.stderr)
    unknown = [words for req in requests for words in req.unknown_words]
    for prompt, words in zip(prompts, unknown):
        if words:
            named = f"{prompt!r}: " if len(prompts) > 1 else ""
            print(f"patchflow generate: note: {named}{unknown_words_note(words, pipe.world)}", file=sys.stderr)
    paths = output_paths(args.output, prompts, args.seed, requests[0].num_frames)
    fps = args.fps or pipe.defaults["fps"]
    done = 0
    for req in requests:
        t0 = time.perf_counter()
        videos = pipe.run(req)
        seconds = time.perf_counter() - t0
        for video in videos:
            path = write_video(video, paths[done], fps=fps)
            done += 1
            print(f"wrote {path} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}, "
                  f"{seconds / len(videos):.1f}s per video)")
    total = time.perf_counter() - start
    print(f"done: {len(prompts)} video(s) in {total:.1f}s (model load {loaded - start:.1f}s on {device})")
    return 0


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt with the shipped model or --model DIR",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog='examples:\n  patchflow generate "a red circle moving right on a black background" -o red.mp4\n'
                              '  patchflow generate "a blue box rising" --image first.png -o i2v.mp4\n'
                              '  patchflow generate "a red ball bouncing" --video clip.mp4 --extend forward '
                              '--frames 33 -o longer.mp4\n'
                              '  patchflow generate "a green square growing" --loop -o loop.gif')
    add_generate_arguments(p)
    p.set_defaults(func=run_generate)

