"""Which guidance rule draws the outline best? Classifier-free guidance, autoguidance, and intervals.

    python benchmarks/guidance_probe.py PIPELINE --seeds 0 1 2 [--count 100] \
        [--guidance 4] [--cfg-interval 0 1] \
        [--bad runs/long/vid-warm-b128 --bad-step 2000 --ag 2 --ag-interval 0 1]

Runs the held-out row of `patchflow eval model` (`--count` prompts a seed; `--row` another) with the pipeline's
sampler, replacing only how the velocity of each step is combined:

    v = v_c + (g - 1) (v_c - v_u) + (w - 1) (v_c - v_b)

v_c, v_u: the pipeline's model under the prompt and the empty caption (classifier-free guidance,
g = `--guidance`, applied only for t in `--cfg-interval`, else g = `--cfg-outside`, default 1;
the pipeline's own `guidance_interval` applies first: probe on a pipeline whose interval is [0, 1]); v_b: a worse version of the
model (the EMA weights of `--bad`'s checkpoint at `--bad-step`) under the same prompt, w = `--ag`,
applied only for t in `--ag-interval` (autoguidance, Karras et al. 2024, "Guiding a diffusion model
with a bad version of itself": the bad model's errors are the good one's, larger, so extrapolating
away from them sharpens what the good model is unsure of, without CFG's pull toward the typical).
With `--ag 1` and the whole interval this is the pipeline's own sampler. The bad model replaces both
the main transformer and the noisy-end expert in its pass (`--bad-expert` names a run for the expert's
range instead).

`--compose B` (for two-object prompts: `--row two_objects`) adds composable guidance (Liu et al. 2022,
"Compositional visual generation with composable diffusion models"): each object's own caption
("a large red square moving up on a black background") is a further conditional pass v_i, and in the
guided steps

    v = v_u + g [A (v_c - v_u) + B sum_i (v_i - v_u)]      (A = `--full-weight`, default 1)

so each object is pushed for on its own. One-object prompts have one component (their own caption).
Prints one JSON line per seed (with the one-object prompts passed per size and shape) and the mean.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import patchflow.flow as flow
from patchflow.evaluation.model_eval import evaluate_row
from patchflow.models.dit import DiT
from patchflow.pipelines.pipeline import VideoPipeline
from patchflow.training.checkpoint import list_checkpoints, load_checkpoint

SHOWN = ("all", "presence", "shape", "motion", "stability")


def bad_model(run: Path, step: int | None, dtype: torch.dtype) -> DiT:
    """The run's DiT with the EMA weights of its checkpoint at `step` (its final weights when None)."""
    pipe = VideoPipeline.from_pretrained(run)
    model = pipe.transformer
    if step is not None:
        found = [p for p in list_checkpoints(run / "checkpoints") if int(p.stem.split("_")[-1]) == step]
        if not found:
            raise SystemExit(f"{run}: no checkpoint at step {step}")
        state = load_checkpoint(found[0])
        model.load_state_dict(state["ema"] if state.get("ema") else state["model"])
    return model.to(dtype).eval()


def components(prompt: str) -> list[str]:
    """A Shapes World caption's one-object captions: "A and B on a C background" -> [A on .., B on ..]."""
    objects, sep, background = prompt.rpartition(" on a ")
    if not sep:
        return [prompt]
    return [f"{o.strip()} on a {background}" for o in objects.split(" and ")]


def install(pipe: VideoPipeline, args, bad: DiT | None, bad_expert: DiT | None) -> None:
    """Replace flow.guided_velocity (which flow.sample calls each step) by the probe's rule."""
    parts: list = []  # the current call's component conditionings, set when its prompts are encoded
    encode = pipe.encode_prompt

    def encode_and_split(prompts: list[str]):
        if args.compose and any(p.strip() for p in prompts):  # the prompts, not the empty uncond captions
            split = [components(p) for p in prompts]
            parts[:] = [encode([c[min(i, len(c) - 1)] for c in split]) for i in range(max(map(len, split)))]
        return encode(prompts)

    pipe.encode_prompt = encode_and_split

    def inside(t: torch.Tensor, interval: list[float]) -> bool:
        level = float(t.max())  # this step's noise level (given frames carry t = 0)
        return interval[0] <= level <= interval[1]

    def rule(model_fn, x, t, cond, uncond=None, guidance_scale=1.0, batched=True):
        g = guidance_scale if inside(t, args.cfg_interval) else args.cfg_outside
        if g != 1.0:
            v_c, v_u = model_fn(torch.cat([x, x]), torch.cat([t, t]), flow._cat_cond(cond, uncond)).chunk(2)
            v = v_c + (g - 1.0) * (v_c - v_u)
            if args.compose:
                v = v_u + g * (args.full_weight * (v_c - v_u)
                               + args.compose * sum(model_fn(x, t, part) - v_u for part in parts))
        else:
            v_c = v = model_fn(x, t, cond)
        if bad is not None and args.ag != 1.0 and inside(t, args.ag_interval):
            saved = pipe.transformer, pipe.noisy_expert
            pipe.transformer, pipe.noisy_expert = bad, bad_expert  # model_fn reads them at call time
            try:
                v_b = model_fn(x, t, cond)
            finally:
                pipe.transformer, pipe.noisy_expert = saved
            v = v + (args.ag - 1.0) * (v_c - v_b)
        return v

    flow.guided_velocity = rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", type=Path, help="pipeline folder (e.g. src/patchflow/pretrained/shapes-world)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--count", type=int, default=100, help="held-out prompts a seed (default 100)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance g (default: the pipeline's)")
    parser.add_argument("--cfg-interval", type=float, nargs=2, default=[0.0, 1.0], metavar=("LO", "HI"))
    parser.add_argument("--cfg-outside", type=float, default=1.0, help="the guidance outside --cfg-interval (default 1: none)")
    parser.add_argument("--bad", type=Path, help="DiT run whose checkpoint is the bad model")
    parser.add_argument("--bad-step", type=int, help="the bad model's checkpoint step (default: its final weights)")
    parser.add_argument("--bad-expert", type=Path, help="a run for the bad pass in the expert's range")
    parser.add_argument("--ag", type=float, default=1.0, help="autoguidance weight w (1 = off)")
    parser.add_argument("--ag-interval", type=float, nargs=2, default=[0.0, 1.0], metavar=("LO", "HI"))
    parser.add_argument("--compose", type=float, default=0.0, help="weight B of the per-object captions (0 = off)")
    parser.add_argument("--full-weight", type=float, default=1.0, help="weight A of the whole caption under --compose")
    parser.add_argument("--row", default="heldout", help="the evaluation row (default heldout; two_objects for --compose)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the pipeline's)")
    parser.add_argument("--out", type=Path, help="append the JSON lines here")
    args = parser.parse_args()

    pipe = VideoPipeline.from_pretrained(args.pipeline)
    bad = bad_expert = None
    if args.bad is not None:
        bad = bad_model(args.bad, args.bad_step, pipe.dtype)
        bad_expert = bad if args.bad_expert is None else bad_model(args.bad_expert, None, pipe.dtype)
    install(pipe, args, bad, bad_expert)
    guidance = args.guidance if args.guidance is not None else pipe.defaults["guidance_scale"]
    setting = {k: v for k, v in vars(args).items() if k not in ("pipeline", "seeds", "out", "count")}
    setting = {k: (str(v) if isinstance(v, Path) else v) for k, v in setting.items()}
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        r = evaluate_row(pipe, args.row, count=args.count, seed=seed, steps=args.steps, guidance=guidance,
                         progress=False)
        line = {"seed": seed, **{k: round(100 * r[k], 1) for k in SHOWN if k in r},
                "seconds": round(time.perf_counter() - start, 1),
                "by_shape": {k: f"{p}/{n}" for k, (p, n) in r["by_object"].items()}, **setting}
        rows.append(line)
        print(json.dumps(line), flush=True)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(json.dumps(line) + "\n")
    print(f"mean over seeds {args.seeds}: " + ", ".join(
        f"{k} {np.mean([r[k] for r in rows if k in r]):.1f}%" for k in SHOWN))


if __name__ == "__main__":
    main()
