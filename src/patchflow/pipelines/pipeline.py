"""VideoPipeline: prompts (and images or clips) to videos, every task from one model.

    pipe = VideoPipeline.from_pretrained()            # the shipped model, or a folder / training run
    video = pipe("a red circle moving right on a black background", num_frames=17, seed=0)  # uint8 [T, H, W, 3]
    export_to_video(video, "out.mp4", fps=pipe.defaults["fps"])

Generation (DESIGN.md): prompt -> expand -> text encoder -> (cond, uncond); the result's frames
are a pixel canvas where the user's image/clips sit in place; the canvas is encoded by the causal
VAE and its fully given latent frames become clean condition tokens (per-token t = 0) that the
flow sampler re-imposes at every step; the rest starts as noise. A batch of prompts is packed into
one token batch (NaViT rows) and denoised in one pass. Videos longer than the trained clip length
are made window by window, each window conditioned on the frames of the one before (tasks.py).

The folder a pipeline is saved in and loaded from (model_index.json and its parts): folder.py.

A noisy-end expert (eDiff-I's expert denoisers, Wan 2.2's high-noise expert): at t ~ 1 the model
decides the layout from the caption alone, a task the rest of the trajectory never trains well
(benchmarks/RESULTS.md, "Fifth sitting"); `with_noisy_expert` adds one trained only there.
"""

from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from patchflow.data.video_processing import to_model_video, to_user_video
from patchflow.models.dit import DiT
from patchflow.flow import FlowConfig, sample as flow_sample, share_noise_over_frames, shift_for_tokens
from patchflow.models.patches import pack
from patchflow.pipelines.folder import read_folder, write_folder
from patchflow.pipelines.inputs import Request, check_request
from patchflow.pipelines.prompts import PromptWarning, unknown_words_note
from patchflow.shapes import get_world
from patchflow.pipelines.tasks import fill_unknown, frame_mask, latent_frame_mask
from patchflow.models.text import TextEncoder
from patchflow.models.sizes import shape_rules
from patchflow.models.vae import VideoVAE

DEFAULTS = {
    "num_frames": 17,            # the trained clip length; longer videos are made window by window
    "height": 64,
    "width": 64,
    "num_inference_steps": 30,
    "guidance_scale": 4.0,       # classifier-free guidance; 1.0 = off (one model pass per step)
    "guidance_interval": (0.0, 1.0),  # guide only the steps starting at a noise level t in [lo, hi]
    "sampler": "euler",          # "euler" | "heun"
    "shift": None,               # the sampler's time shift; None = from the token count (flow.shift_for_tokens)
    "fps": 8,                    # the frame rate the model was trained at (for writing files)
}


class VideoPipeline:
    """Transformer (DiT), causal VAE and text encoder, with the flow settings and generation defaults.

    world: the name of the world its captions described (patchflow.shapes.WORLDS: "shapes", the
    built-in world and the default): a call rewrites prompts into that world's caption form and warns
    (PromptWarning) about words it cannot place. None for any other model (real footage): prompts
    are taken as written.
    """

    def __init__(self, transformer: DiT, vae: VideoVAE, text_encoder: TextEncoder,
                 flow_config: FlowConfig | None = None, defaults: dict | None = None,
                 text_encoder_spec: str | None = None, world: str | None = "shapes",
                 noisy_expert: DiT | None = None, noisy_boundary: float = 0.95):
        if transformer.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"the transformer takes {transformer.config.in_channels} latent channels but the VAE "
                             f"makes {vae.config.latent_channels}")
        if transformer.config.text_dim != text_encoder.dim:
            raise ValueError(f"the transformer reads text of width {transformer.config.text_dim} but the text "
                             f"encoder {getattr(text_encoder, 'spec', '?')!r} gives {text_encoder.dim}")
        unknown = sorted(set(defaults or {}) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown defaults {unknown}; known: {sorted(DEFAULTS)}")
        get_world(world)  # a known world or None, else ValueError
        # Modes are left alone: a training loop may build a pipeline from its live (training) modules;
        # __call__ switches to eval mode only while it runs.
        self.transformer, self.vae, self.text_encoder = transformer, vae, text_encoder
        self.flow_config = flow_config or FlowConfig()
        self.defaults = {**DEFAULTS, **(defaults or {})}
        self.text_encoder_spec = text_encoder_spec or getattr(text_encoder, "spec", "minilm")
        self.world = world
        self._offload: torch.device | None = None  # set by enable_model_cpu_offload
        self.noisy_expert: DiT | None = None
        self.noisy_boundary = noisy_boundary
        if noisy_expert is not None:
            self.with_noisy_expert(noisy_expert, noisy_boundary)

    def with_noisy_expert(self, expert: DiT, boundary: float = 0.95) -> VideoPipeline:
        """Let `expert` (a DiT on the same latents, patches and text) take every sampler step at
        t >= `boundary`; the transformer keeps the rest. Returns the pipeline."""
        mine, theirs = self.transformer.config, expert.config
        for field in ("in_channels", "patch_size", "text_dim"):
            if getattr(mine, field) != getattr(theirs, field):
                raise ValueError(f"the noisy-end expert's {field} {getattr(theirs, field)!r} differs from the "
                                 f"transformer's {getattr(mine, field)!r}")
        if not 0.0 < boundary < 1.0:
            raise ValueError(f"noisy_boundary must be in (0, 1), got {boundary!r}")
        self.noisy_expert, self.noisy_boundary = expert, float(boundary)
        return self

    def _components(self) -> list[nn.Module]:
        return [m for m in (self.transformer, self.noisy_expert, self.vae, self.text_encoder) if m is not None]

    # ------------------------------------------------------------ loading and saving (folder.py)
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> VideoPipeline:
        """Load a pipeline folder (with model_index.json), a training run (its `final/`), or None = the shipped model."""
        return cls(**read_folder(path)).to(device, dtype)

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write the pipeline folder (folder.py); `dtype` (e.g. torch.bfloat16) casts the saved weights."""
        return write_folder(self, directory, dtype)

    # ------------------------------------------------------------ devices and memory
    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> VideoPipeline:
        """Move (and cast) every component; a device also turns model CPU offload off."""
        for module in self._components():
            module.to(device=device, dtype=dtype)
        if device is not None:
            self._offload = None
        return self

    @property
    def device(self) -> torch.device:
        """Where the computation runs (the offload device when offloading)."""
        return self._offload or next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def enable_vae_tiling(self, tile_frames: int = 16, tile_size: int | None = 256, overlap: int = 64) -> None:
        """Encode/decode in time chunks and overlapping spatial tiles (see VideoVAE.enable_tiling)."""
        self.vae.enable_tiling(tile_frames, tile_size, overlap)

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> None:
        """Keep components on the CPU and move each to `device` only while it runs (text encoder, then DiT,
        then VAE), so GPU memory holds one component at a time. Without that device (e.g. a CPU-only
        machine, or device="cpu") this is a no-op: everything already runs in CPU memory."""
        device = torch.device(device)
        if device.type == "cpu" or (device.type == "cuda" and not torch.cuda.is_available()):
            return
        self.to("cpu")
        self._offload = device

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode for the call, then each module's own mode back (training loops sample mid-run)."""
        modules = [m for c in self._components() for m in c.modules()]
        modes = [m.training for m in modules]
        for c in self._components():
            c.eval()
        try:
            yield
        finally:
            for m, mode in zip(modules, modes):
                m.training = mode

    @contextmanager
    def _running(self, *modules: nn.Module | None) -> Iterator[None]:
        if self._offload is None:
            yield
            return
        modules = [m for m in modules if m is not None]
        for module in modules:
            module.to(self._offload)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")
            if self._offload.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------ pieces
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text states [B, L, D] (in the transformer's dtype) and mask [B, L] bool, on the pipeline's device."""
        with self._running(self.text_encoder):
            tokens, mask = self.text_encoder.encode(prompts)
        return tokens.to(self.device, self.dtype), mask.to(self.device)

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [B, T, H, W, 3] -> normalised latents float32 [B, C, T', H', W'] (posterior mean)."""
        video = torch.stack([to_model_video(f) for f in frames])  # (B, 3, T, H, W)
        with self._running(self.vae):
            video = video.to(next(self.vae.parameters()).device)  # the VAE may live apart from the DiT
            return self.vae.normalize(self.vae.encode(video).mode()).float().to(self.device)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents [B, C, T', H', W'] -> uint8 [B, T, H, W, 3]."""
        with self._running(self.vae):
            latents = latents.to(self.vae.latent_std)  # the VAE's device and dtype
            video = self.vae.decode(self.vae.denormalize(latents))  # (B, 3, T, H, W)
        return np.stack([to_user_video(v) for v in video])

    def _model_fn(self, packed, batch: int) -> Callable:
        """flow.sample's model_fn over packed rows; under batched guidance x holds the rows twice
        ([2R, S, D]) and the second copy reads the uncond text rows B..2B-1."""
        rows, dtype = packed.tokens.shape[0], self.dtype

        def fn(x: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            text, text_mask = cond
            reps = x.shape[0] // rows
            coords = packed.coords.repeat(reps, 1, 1)  # (reps R, S, 3)
            ids = torch.cat([torch.where(packed.sample_ids >= 0, packed.sample_ids + k * batch, -1)
                             for k in range(reps)])  # (reps R, S)
            expert = self.noisy_expert is not None and float(t.max()) >= self.noisy_boundary  # t: this step's level
            model = self.noisy_expert if expert else self.transformer
            return model(x.to(dtype), t.to(dtype), coords, ids, text.to(dtype), text_mask).float()
        return fn

    def shape_rules(self) -> dict:
        """The frame counts and sizes this model takes, in words and numbers (sizes.shape_rules with the DiT's patch)."""
        c = self.vae.config
        return shape_rules(c.ft, c.fs, tuple(self.transformer.config.patch_size))

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_frames: int | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, negative_prompt: str | list[str] | None = None,
                 seed: int | list[int] | None = None, generator: torch.Generator | list | None = None,
                 image: Any = None, image_frame: int = 0, video: Any = None, extend: str | None = None,
                 end_video: Any = None, loop: bool = False, strength: float | None = None,
                 sampler: str | None = None, shift: float | None = None, expand_prompt: bool = True,
                 output_type: str = "np", callback_on_step_end: Callable | None = None, progress: bool = True,
                 guidance_interval: tuple[float, float] | None = None):
        """Generate one video per prompt. Unset sizes, steps, guidance and sampler come from `self.defaults`.

        Tasks (one model; given frames are clean latent tokens, the rest is generated):
          text-to-video    prompt only; num_frames=1 is text-to-image ([1, H, W, 3])
          image-to-video   image= (path, PIL image or uint8 [H, W, 3]) at frame 0, or at image_frame=k.
                           The causal VAE encodes frame 0 alone and later frames in groups of ft, so an
                           image at k >= 1 stands for its whole group (frames 1+(j-1)ft..j ft, j = ceil(k/ft)):
                           it is held still for those ft frames. Frame 0 is exact.
          extend           video=clip, extend="forward" (clip kept at the start) or "backward" (at the end),
                           num_frames = the total. Clips at the start cover whole latent frames with 1 + k ft
                           frames, at the end with k ft; other frames of the clip are regenerated (a warning).
          connect          video=a, end_video=b, num_frames = the total: a at the start, b at the end.
          loop             loop=True: generate, then regenerate the last frames as a transition from the
                           frames before them into the first frames (a second, one-window pass), so the
                           last frame leads into the first. Works with text, image= and extend="forward".
          edit (SDEdit)    video=clip, strength in [0, 1] with a new prompt: the clip's latents are noised
                           to t = strength and denoised (0 = the VAE round trip, 1 = a new video).
          long videos      num_frames above defaults["num_frames"] (the trained length): windows of the
                           trained length, each conditioned on about half a window of the frames before
                           (after, for backward extension); model memory stays that of one window
                           (the result's uint8 frames are the only thing that grows).
        Given frames in the output are their VAE round trip (decoded from the clean latents).

        prompt: a string -> one video; a list -> a batch, packed and denoised in one pass.
        negative_prompt: the uncond branch of guidance (default ""). expand_prompt: rewrite Shapes World
            prompts into the trained caption form (prompts.expand_prompt; other prompts pass unchanged).
            With it, a model whose `world` is "shapes" also warns, once per call (PromptWarning), naming
            each prompt's words that world cannot place (prompts.unknown_words: "a dragon flying over a
            city" -> dragon, flying, city), and generates all the same; models of another world
            (world=None) and expand_prompt=False stay silent.
        seed: int (prompt b uses seed + b, so a batch equals its prompts run one by one with those
            seeds) or one per prompt; generator: a torch.Generator shared by the batch or one per prompt;
            neither = a random seed. shift: the sampler's time shift (default: defaults["shift"], else from
            the token count). guidance_interval (lo, hi): guide only the steps that start at a noise level
            t in [lo, hi] (default: defaults["guidance_interval"]); the shipped Shapes World model leaves
            its last steps (t < 0.3) unguided.
        callback_on_step_end(step, t, latents [B, C, T', H', W']) after every sampler step.
        output_type: "np" uint8 [T, H, W, 3] (a list prompt: [B, T, H, W, 3]); "pt" float [(B,) 3, T, H, W]
            in [-1, 1]; "pil" a list of PIL frames (per prompt for a list).
        """
        req = self.check_inputs(prompt, num_frames=num_frames, height=height, width=width,
                                num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                negative_prompt=negative_prompt, seed=seed, generator=generator, image=image,
                                image_frame=image_frame, video=video, extend=extend, end_video=end_video, loop=loop,
                                strength=strength, sampler=sampler, shift=shift, expand_prompt=expand_prompt,
                                output_type=output_type, callback_on_step_end=callback_on_step_end,
                                progress=progress, guidance_interval=guidance_interval)
        notes = [f"{p!r}: {unknown_words_note(words, self.world)}"
                 for p, words in zip([prompt] if req.single else prompt, req.unknown_words) if words]
        if notes:
            warnings.warn("; ".join(notes), PromptWarning, stacklevel=3)  # the caller (past no_grad)
        return self.run(req)

    def check_inputs(self, prompt: str | list[str], *, round_frames: bool = False, **kwargs) -> Request:
        """Check and load the arguments of `__call__` into a `Request` without generating (as diffusers'
        `check_inputs`): prompts expanded and judged (`unknown_words`), sizes and frames against the VAE's
        rules, images and videos decoded and placed, the windows of a long video planned. Raises an
        `InputError` naming the argument at fault. Front ends show its `unknown_words` and `notes`, then
        pass it to `run`. round_frames: see `pipeline_inputs.check_request`."""
        return check_request(self, prompt=prompt, round_frames=round_frames, **kwargs)

    @torch.no_grad()
    def run(self, req: Request):
        """Generate a checked request (from `check_inputs`); returns what `__call__` returns. A request
        draws its noise from its own generators, so run it once."""
        with self._eval_mode():
            videos = self._generate(req)  # (B, T, H, W, 3) uint8
        if req.output_type == "pt":
            out = torch.stack([to_model_video(v) for v in videos])  # (B, 3, T, H, W)
        elif req.output_type == "pil":
            from PIL import Image

            out = [[Image.fromarray(f) for f in v] for v in videos]
        else:
            out = videos
        return out[0] if req.single else out

    def _generate(self, req: Request) -> np.ndarray:
        """Fill the canvas window by window; returns uint8 [B, T, H, W, 3]."""
        text = self.encode_prompt(req.prompts)
        uncond = self.encode_prompt(req.negative) if req.guidance != 1.0 else None
        canvas, given = req.canvas.copy(), req.given
        out = np.zeros_like(canvas)
        done = torch.zeros_like(given)
        total, spans = req.num_frames, req.windows
        steps_done = 0
        for start, stop in tqdm(spans, desc="windows", disable=not req.progress or len(spans) == 1, leave=False):
            known = given[start:stop] | done[start:stop]
            source = None if req.source is None else req.source[:, start:stop]
            video = self._run_window(req, canvas[:, start:stop], known, source, text, uncond, steps_done)
            new = (~done[start:stop]).nonzero().squeeze(1).numpy() + start  # frames decoded for the first time
            out[:, new] = video[:, new - start]
            fresh = new[~given.numpy()[new]]  # generated frames become context for later windows
            canvas[:, fresh] = video[:, fresh - start]
            done[start:stop] = True
            steps_done += req.steps
        if req.loop is not None:
            c, g, e = req.loop
            frames = np.concatenate([canvas[:, total - g - c:total - g], np.zeros_like(canvas[:, :g]),
                                     canvas[:, :e]], axis=1)  # (B, c + g + e, H, W, 3)
            video = self._run_window(req, frames, frame_mask(c + g + e, c, e), None, text, uncond, steps_done)
            out[:, total - g:] = video[:, c:c + g]
        return out

    def _run_window(self, req: Request, frames: np.ndarray, known: torch.Tensor, source: np.ndarray | None,
                    text, uncond, step_offset: int) -> np.ndarray:
        """Generate one window: frames uint8 [B, Tw, H, W, 3] with `known` [Tw] given -> decoded uint8 [B, Tw, H, W, 3]."""
        batch, device = frames.shape[0], self.device
        patch = tuple(self.transformer.config.patch_size)
        latent_mask = latent_frame_mask(known, self.vae.config.ft)  # (T',)
        shape = self.vae.latent_shape(frames.shape[1], req.height, req.width)  # (C, T', H', W')
        if latent_mask.any():
            x_cond = self.encode_video(fill_unknown(frames, known))  # (B, C, T', H', W')
        else:
            x_cond = torch.zeros(batch, *shape, device=device)
        x_init = None if source is None else self.encode_video(source)
        noise = torch.stack([self._noise(req, b, shape) for b in range(batch)]).to(device)  # (B, C, T', H', W')
        if x_init is not None and req.strength == 0.0:  # an edit that keeps the clip: no sampling at all
            return self.decode_latents(torch.where(latent_mask.to(device)[:, None, None], x_cond, x_init))
        cond_frames = [latent_mask.to(device)] * batch
        packed = pack(list(x_cond), patch, cond_frames=cond_frames)  # rows of clean condition tokens
        noise_tokens = pack(list(noise), patch, cond_frames=cond_frames).tokens  # same layout: (R, S, D)
        # The prior the model was trained on: frames share part of their noise (each sample's own draw).
        noise_tokens = share_noise_over_frames(
            noise_tokens, packed.coords, packed.sample_ids, self.flow_config.frame_noise_share,
            lambda shape: torch.stack([self._noise(req, b, shape[1:]) for b in range(shape[0])]))
        init_tokens = None if x_init is None else pack(list(x_init), patch, cond_frames=cond_frames).tokens
        keep = packed.cond_mask | (packed.sample_ids < 0)  # condition tokens and padding stay as given
        shift = req.shift or shift_for_tokens(math.prod(packed.grids[0]), self.flow_config)

        callback = None
        if req.callback is not None:
            def callback(step: int, t: float, x: torch.Tensor) -> None:
                req.callback(step_offset + step, t, torch.stack(packed.unpack(x)))

        with self._running(self.transformer, self.noisy_expert):
            x = flow_sample(self._model_fn(packed, batch), noise_tokens, req.steps, req.sampler, shift,
                            req.guidance, text, uncond, x_init=init_tokens, t_start=req.strength,
                            x_cond=packed.tokens, cond_mask=keep, progress=req.progress, callback=callback,
                            guidance_interval=req.guidance_interval)
        return self.decode_latents(torch.stack(packed.unpack(x)))  # (B, Tw, H, W, 3)

    @staticmethod
    def _noise(req: Request, b: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Sample b's noise from its own generator (or the shared one), drawn window after window."""
        gen = req.generators[b] if len(req.generators) > 1 else req.generators[0]
        return torch.randn(shape, generator=gen, device=gen.device)

