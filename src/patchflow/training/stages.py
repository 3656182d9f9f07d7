"""What one training step computes, per stage; the loop itself is in train.py.

A stage owns its models and turns a batch of clips into a loss (`Stage` is what
the loop asks of one; the hooks a stage does not need do nothing):

    DiTStage   frozen VAE -> latents, frozen text encoder -> states, random task masks,
               pack (NaViT) -> flow-matching loss on the generated tokens
    VAEStage   encode -> sample -> decode -> L1 + SSIM + KL (+ a late adversarial term)

Everything random in a micro-batch comes from `rng`/`gen`, which the loop seeds
from (seed, step, micro-batch, rank): that is what makes resume exact and makes
2 processes equal 1 process with 2 accumulation steps.
"""

from __future__ import annotations

import copy
import functools
import random
from abc import ABC, abstractmethod
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from patchflow.training.config import Config
from patchflow.training.data import build_dataset
from patchflow.training.cache import CachedLatents, by_shape, cache_key
from patchflow.models.dit import DiT
from patchflow.flow import flow_matching_loss, sample_timesteps, share_noise_over_frames
from patchflow.models.patches import pack, pad_batch
from patchflow.pipelines.prompts import choose_caption, drop_caption
from patchflow.shapes import get_world
from patchflow.models.sequence_parallel import shard_packed, shard_sequence
from patchflow.models.text import TextEmbeddingCache, TextEncoder, load_text_encoder
from patchflow.models.vae import VideoVAE
from patchflow.training.vae_loss import VAELoss


def check_data_geometry(config: Config, vae: VideoVAE, patch: tuple = (1, 1, 1)) -> None:
    """Clip lengths and sizes the VAE (and DiT patch) can take, before any step runs."""
    for f in config.data.frames:
        vae.check_frames(f, patch[0], name="data.frames")
    for h, w in config.data.sizes:
        vae.check_size(h, w, patch[1:], names=("data.sizes height", "data.sizes width"))


def _load_same_shapes(model: nn.Module, state: dict, message: str, additions: tuple[str, ...] = ()) -> None:
    """Load `state` into `model`, refusing with `message` unless every parameter name and shape match.
    Parameters under the prefixes `additions` (modules added to the model's input that a warm start may
    lack, such as the DiT's frame_pos) are zeroed when `state` does not have them: the model begins as
    the one it starts from."""
    own = model.state_dict()
    added = {k: torch.zeros_like(v) for k, v in own.items() if k not in state and k.startswith(additions)}
    if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in own.items() if k not in added}:
        raise ValueError(message)
    model.load_state_dict({**state, **added})


@torch.no_grad()
def object_tokens(packed, threshold: float) -> torch.Tensor:
    """Tokens unlike their frame's background: bool [R, S], True where a token's latent lies more than
    `threshold` times the frame's median distance (L2) from the coordinate-wise median token of the same
    sample and latent frame. A Shapes World object covers 4-10% of the canvas, so the median token of a
    frame is its background and the median distance its noise floor (posterior noise, the VAE's border
    tokens: 0.1-2 in normalised units, clip to clip), and the flag picks the tokens that carry shape
    and motion. Relative, because a fixed distance flagged 75% of the tokens of the general VAE's latents."""
    flags = torch.zeros(packed.sample_ids.shape, dtype=torch.bool, device=packed.tokens.device)
    for b in range(packed.num_samples):
        r, s, n = int(packed.sample_row[b]), int(packed.sample_start[b]), int(packed.sample_len[b])
        tokens, frames = packed.tokens[r, s:s + n].float(), packed.coords[r, s:s + n, 0]  # [n, D], [n]
        for f in frames.unique():
            pick = frames == f
            dist = (tokens[pick] - tokens[pick].median(0).values).norm(dim=1)            # [n_f]
            flags[r, s:s + n][pick] = dist > threshold * dist.median().clamp(min=1e-3)
    return flags


class Stage(ABC):
    """What the training loop asks of a stage: a loss per micro-batch, the saved result, and hooks."""

    name: str
    model: nn.Module  # what the loop wraps (DDP/FSDP), optimises and checkpoints

    @abstractmethod
    def batch_loss(self, model: nn.Module, batch: dict, step: int, rng: random.Random,
                   gen: torch.Generator) -> tuple[torch.Tensor, dict, int]:
        """(loss to backward, logs, tokens or pixels it covered) of one micro-batch; `model` is the wrapped model."""

    @abstractmethod
    def save_final(self, final: Path, model_state: dict, dtype: torch.dtype | None = None) -> None:
        """Write the trained component(s) with weights `model_state` into the folder `final`."""

    reports_mfu = False  # its steps' FLOPs are counted (step_flops), so the log shows model FLOPs utilisation
    sequence_parallel = False  # it can shard a batch's tokens over ranks (train.sequence_parallel > 1)

    def check_geometry(self) -> None:
        """Refuse, before any step runs, clip lengths and sizes the stage's models cannot take."""

    def step_flops(self, logs: dict) -> float:
        """Training FLOPs (forward and backward) of the micro-batch that returned `logs`; 0 if not counted."""
        return 0.0

    def timestep_losses(self, logs: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(t [B], per-sample loss [B]) of the micro-batch for the loss-by-timestep log; None if it has none."""
        return None

    def enable_sequence_parallel(self, group) -> None:
        """Shard each batch's token sequence over `group`; only stages with `sequence_parallel` can."""
        raise NotImplementedError(f"the {self.name} stage has no sequence parallelism")

    @abstractmethod
    def init_from(self, folder: str) -> None:
        """Load the trained weights of the stage's component from a run or pipeline folder (train.init_from)."""

    def dataset(self) -> Dataset:
        """What the loop draws batches from: the clips of the [data] table by default."""
        return build_dataset(self.config.data, self.config.train.seed)

    def compile(self) -> None:
        """torch.compile what pays off (train.compile); nothing by default."""

    def after_step(self, step: int) -> dict:
        """Work after the optimiser step (e.g. a discriminator's update); returns float logs."""
        return {}

    def extra_state(self) -> dict:
        """What a checkpoint keeps beyond model, EMA and optimiser (restored by `load_extra_state`)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what `extra_state` returned."""

    def write_samples(self, directory: Path, model_state: dict | None, config: Config) -> None:
        """Sample outputs of weights `model_state` (None: the live model) into `directory`; nothing by default."""


class DiTStage(Stage):
    name = "dit"
    reports_mfu = sequence_parallel = True

    def __init__(self, config: Config, device: torch.device):
        self.config, self.device = config, device
        self.vae = config.vae.load(device).eval().requires_grad_(False)
        self.text_encoder: TextEncoder = load_text_encoder(config.text.encoder, device).eval()
        self.text_encoder.requires_grad_(False)
        self.text = TextEmbeddingCache(Path(config.data.cache) / "text", self.text_encoder) \
            if config.data.cache else self.text_encoder
        self.model = DiT(config.dit.build(self.vae.config.latent_channels, self.text_encoder.dim))
        self.tasks = {k: float(v) for k, v in vars(config.tasks).items()}
        self.world = get_world("shapes") if config.data.attribute_dropout else None  # what leaves words out
        self.sp_group = None  # set by enable_sequence_parallel
        if not self.config.vae.path:
            print("note: [vae] has no trained `path`; the DiT learns the latents of an untrained VAE "
                  "(fine for tests, useless for real samples)")

    def enable_sequence_parallel(self, group) -> None:
        """Shard each packed batch's tokens over `group` (the ranks of one sequence-parallel group)."""
        self.model.enable_sequence_parallel(group)
        self.sp_group = group

    def check_geometry(self) -> None:
        check_data_geometry(self.config, self.vae, self.model.config.patch_size)

    def init_from(self, folder: str) -> None:
        """The transformer of a pipeline folder or run, or a run's checkpoint file (its EMA weights):
        same architecture, any data it was trained on."""
        from patchflow.pipelines.folder import pipeline_folder
        from patchflow.training.checkpoint import load_checkpoint

        if Path(folder).expanduser().is_file():  # e.g. runs/x/checkpoints/step_00005000.pt of a run still going
            saved = load_checkpoint(Path(folder).expanduser())
            state = {k: v.float() for k, v in (saved.get("ema") or saved["model"]).items()}
        else:
            state = DiT.from_pretrained(pipeline_folder(folder) / "transformer").state_dict()
        _load_same_shapes(self.model, state, f"train.init_from={folder}: its transformer has other parameters "
                                             "than this run's [dit] (width, depth, patch, local_mix, "
                                             "pooled_text or frame_position differ)", additions=("frame_pos.",))

    def dataset(self) -> Dataset:
        """The clips, or their latents and text states from a `patchflow cache` folder (data.cache)."""
        if self.config.data.cache:
            return CachedLatents(self.config.data.cache, cache_key(self.config))
        return super().dataset()

    def step_flops(self, logs: dict) -> float:
        # Token counts (after any token drop); the factorized layout's attention needs the grids.
        per_sample = logs["grids"] if self.model.config.attention_layout == "factorized" else logs["lengths"]
        return 3 * self.model.estimate_flops(per_sample, text_len=logs["text_len"])

    def timestep_losses(self, logs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return logs["t"], logs["per_sample"]

    def compile(self) -> None:
        self.model.compile_blocks()

    @torch.no_grad()
    def latents(self, batch: dict, gen: torch.Generator) -> list[torch.Tensor]:
        """Normalised latents [C, T', H', W'] per clip: a fresh sample of the VAE posterior (as in SD/Wan)
        of each clip's video, or of its posterior stored in a cache."""
        if "latent" in batch:
            return [self.vae.normalize((mean + std * torch.randn(mean.shape, generator=gen))[None].to(self.device))[0]
                    for mean, std in batch["latent"]]
        videos = batch["video"]
        out: list[torch.Tensor | None] = [None] * len(videos)
        for idx in by_shape(videos).values():
            x = torch.stack([videos[i] for i in idx]).to(self.device)  # (n, 3, T, H, W)
            dist = self.vae.encode(x)
            noise = torch.randn(dist.mean.shape, generator=gen).to(self.device)
            z = self.vae.normalize(dist.mean + dist.std * noise)
            for j, i in enumerate(idx):
                out[i] = z[j]
        return out

    def caption(self, captions: dict[str, str], rng: random.Random) -> str:
        """One training caption of an item: a style drawn by weight or, with probability
        `data.attribute_dropout`, the plain caption with one attribute left out (Shapes World)."""
        d = self.config.data
        if d.attribute_dropout and rng.random() < d.attribute_dropout and "plain" in captions:
            try:
                return self.world.drop_attribute(captions["plain"], rng)
            except ValueError:  # not a Shapes World caption (footage in a mixed dataset)
                pass
        return choose_caption(captions, rng, d.caption_styles)

    def batch_loss(self, model: nn.Module, batch: dict, step: int, rng: random.Random,
                   gen: torch.Generator) -> tuple[torch.Tensor, dict, int]:
        from patchflow.pipelines.tasks import sample_task

        c, d = self.config, self.config.data
        captions = [drop_caption(self.caption(caps, rng), d.caption_dropout, rng) for caps in batch["captions"]]
        latents = self.latents(batch, gen)
        tasks, cond_frames = zip(*(sample_task(z.shape[1], self.tasks, rng, self.model.config.patch_size[0])
                                    for z in latents))
        if c.train.packing == "pack":
            packed = pack(latents, self.model.config.patch_size, c.train.token_budget or None,
                          list(cond_frames), c.train.token_drop or None, gen)
        else:
            packed = pad_batch(latents, self.model.config.patch_size, list(cond_frames),
                               c.train.token_drop or None, gen)
        packed = packed.to(self.device)
        text, text_mask = self.text.encode(captions)
        text, text_mask = text.to(self.device), text_mask.to(self.device)
        lengths = torch.bincount(packed.sample_ids[packed.sample_ids >= 0].cpu(), minlength=len(latents))
        t = sample_timesteps(len(latents), c.flow, num_tokens=lengths, generator=gen)  # (B,)
        t_tok = packed.per_token(t) * ~packed.cond_mask  # (R, S): clean condition tokens have t = 0
        weights, logs_extra = packed.loss_mask, {}
        if c.flow.object_weight > 0:  # the loss on the few tokens that hold objects, weighted up
            objects = object_tokens(packed, c.flow.object_threshold) & packed.loss_mask
            weights = packed.loss_mask.float() + c.flow.object_weight * objects.float()
            logs_extra["object_tokens"] = float(objects.sum() / packed.loss_mask.sum().clamp(min=1))
        local, shard = packed, None
        if self.sp_group is not None:  # this rank holds one contiguous shard of every row's tokens (Ulysses)
            local = shard_packed(packed, self.sp_group)
            shard = functools.partial(shard_sequence, group=self.sp_group)

        def velocity(x_t, t_tok, cond):  # the DiT as flow.py's model_fn, on this rank's tokens
            return model(x_t, t_tok, local.coords, local.sample_ids, *cond)

        def mix_noise(noise):  # frames that start from partly the same noise (flow.frame_noise_share)
            return share_noise_over_frames(noise, packed.coords, packed.sample_ids, c.flow.frame_noise_share,
                                           lambda shape: torch.randn(shape, generator=gen))

        loss, per_sample = flow_matching_loss(
            velocity, packed.tokens, t_tok, (text, text_mask), generator=gen,
            loss_mask=weights if shard is None else shard(weights),
            sample_ids=local.sample_ids, num_samples=len(latents), weighting=c.flow.loss_weighting, shard=shard,
            group=self.sp_group, mix_noise=mix_noise if c.flow.frame_noise_share else None)
        logs = {"t": t, "per_sample": per_sample, "padding": packed.padding_fraction,
                "tasks": list(tasks), "lengths": lengths.tolist(), "grids": [tuple(g) for g in packed.grids],
                "text_len": int(text_mask.sum(1).float().mean()),
                **logs_extra}
        return loss, logs, int(packed.loss_mask.sum())

    def pipeline(self, model_state: dict):
        """A VideoPipeline around a copy of the transformer holding `model_state` (e.g. the EMA)."""
        from patchflow.pipelines.pipeline import VideoPipeline

        transformer = DiT(self.model.config).to(self.device)
        transformer.load_state_dict(model_state)
        world = "shapes" if self.config.data.dataset == "shapes" else None  # which prompts it can judge
        return VideoPipeline(transformer.eval(), self.vae, self.text_encoder, flow_config=self.config.flow,
                             text_encoder_spec=self.config.text.encoder, world=world)

    def save_final(self, final: Path, model_state: dict, dtype: torch.dtype | None = None) -> None:
        """Write a pipeline folder (see pipeline.py) with the given transformer weights."""
        self.pipeline(model_state).save_pretrained(final, dtype=dtype)

    def write_samples(self, directory: Path, model_state: dict | None, config: Config) -> None:
        """Videos of the config's sample prompts (mp4 each) and one contact sheet (png)."""
        from patchflow.data.grid import contact_sheet
        from patchflow.data.io import write_video

        state = model_state or {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        pipe = self.pipeline(state)
        h, w = config.data.sizes[0]
        frames = max(config.data.frames)
        prompts = list(config.train.sample_prompts)
        videos = pipe(prompts, num_frames=frames, height=h, width=w, seed=0,
                      num_inference_steps=config.train.sample_steps, progress=False)
        directory.mkdir(parents=True, exist_ok=True)
        for i, video in enumerate(videos):
            write_video(video, directory / f"sample_{i}.mp4")
        contact_sheet(list(videos), prompts, directory / "contact_sheet.png")


LATENT_STATS_CLIPS = 64  # training clips whose latents set the saved VAE's per-channel mean and std


class VAEStage(Stage):
    name = "vae"

    def __init__(self, config: Config, device: torch.device):
        self.config, self.device = config, device
        self.model = config.vae.load(device)
        self.loss_fn = VAELoss(config.vae_loss).to(device)
        self.disc_opt = None
        if self.loss_fn.discriminator is not None:
            self.disc_opt = torch.optim.AdamW(self.loss_fn.discriminator.parameters(), lr=config.train.lr,
                                              betas=tuple(config.train.betas), weight_decay=0.0)
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def check_geometry(self) -> None:
        if self.config.data.dataset == "shapes":  # footage and folders are resized to fit
            check_data_geometry(self.config, self.model)

    def init_from(self, folder: str) -> None:
        """The VAE of a VAE folder, a VAE run (its final/vae) or a pipeline folder (its vae/)."""
        root = Path(folder).expanduser()
        found = next((f for f in (root, root / "vae", root / "final" / "vae") if (f / "model.safetensors").is_file()
                      and (f / "config.json").is_file()), None)
        if found is None:
            raise FileNotFoundError(f"train.init_from={folder}: no VAE in it, its vae/ or its final/vae")
        _load_same_shapes(self.model, VideoVAE.from_pretrained(found).state_dict(),
                          f"train.init_from={folder}: its VAE has other parameters than this run's [vae]")

    def batch_loss(self, model: nn.Module, batch: dict, step: int, rng: random.Random,
                   gen: torch.Generator) -> tuple[torch.Tensor, dict, int]:
        videos = batch["video"]
        last_layer = self.model.decoder.conv_out.conv.weight
        total, logs, pixels = 0.0, defaultdict(float), 0
        self._pairs = []
        for idx in by_shape(videos).values():
            x = torch.stack([videos[i] for i in idx]).to(self.device)  # (n, 3, T, H, W)
            # Through the (DDP) wrapper so gradients sync; the posterior sample draws from a
            # device generator seeded by the step's generator.
            sample_gen = torch.Generator(self.device).manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
            recon, dist = model(x, sample=True, generator=sample_gen, latent_noise=self.config.vae_loss.latent_noise)
            loss, parts = self.loss_fn(x, recon, dist, step, last_layer)
            share = len(idx) / len(videos)
            total = total + share * loss
            for k, v in parts.items():
                logs[k] += share * v
            pixels += x[:, 0].numel()
            self._pairs.append((x, recon.detach()))
        return total, dict(logs), pixels

    def after_step(self, step: int) -> dict:
        """The discriminator's own update, once the adversarial term is on."""
        if self.disc_opt is None or not self.loss_fn.adversarial_active(step):
            return {}
        self.disc_opt.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        for x, recon in self._pairs:
            loss, logs = self.loss_fn.discriminator_loss(x, recon)
            (loss / len(self._pairs)).backward()
        self.disc_opt.step()
        return logs

    def extra_state(self) -> dict:
        if self.disc_opt is None:
            return {}
        return {"disc": self.loss_fn.discriminator.state_dict(), "disc_opt": self.disc_opt.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if self.disc_opt is not None and "disc" in state:
            self.loss_fn.discriminator.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])

    def save_final(self, final: Path, model_state: dict, dtype: torch.dtype | None = None) -> None:
        """Save the VAE with its latent statistics measured on training clips (what `normalize` uses)."""
        from patchflow.models.vae import measure_latent_stats, measure_latent_whitening

        vae = VideoVAE(copy.deepcopy(self.model.config)).to(self.device)
        vae.load_state_dict(model_state)
        if not any(p.requires_grad for p in self.model.encoder.parameters()):  # train.freeze = ["encoder"]
            # A fixed encoder keeps its latents, so the statistics the DiT was trained with stay valid.
            vae.save_pretrained(final / "vae", dtype=dtype)
            return
        dataset = self.dataset()
        clips = (dataset[i]["video"] for i in range(min(LATENT_STATS_CLIPS, len(dataset))))
        clips = (c for c in clips if c is not None)
        if vae.config.whiten_latents:
            vae.set_latent_stats(*measure_latent_whitening(vae.eval(), clips, sample=True))
        else:
            vae.set_latent_stats(*measure_latent_stats(vae.eval(), clips, sample=True))
        vae.save_pretrained(final / "vae", dtype=dtype)

    @torch.no_grad()
    def write_samples(self, directory: Path, model_state: dict | None, config: Config) -> None:
        """Reconstructions of fixed Shapes World clips: input above, output below."""
        from patchflow.data.datasets import ShapesDataset
        from patchflow.data.video_processing import to_user_video
        from patchflow.data.grid import contact_sheet
        from patchflow.data.io import write_video

        vae = VideoVAE(self.model.config).to(self.device).eval()
        vae.load_state_dict(model_state or self.model.state_dict())
        h, w = (int(v) for v in config.data.sizes[0])
        frames = max(int(f) for f in config.data.frames)
        clips = [ShapesDataset(4, [(h, w)], [frames], split="all", seed=123)[i]["video"] for i in range(4)]
        x = torch.stack(clips).to(self.device)  # (4, 3, T, H, W)
        recon = vae(x, sample=False)[0].clamp(-1, 1)
        pairs = [to_user_video(torch.cat([a, b], dim=2)) for a, b in zip(x, recon)]  # stacked on height
        directory.mkdir(parents=True, exist_ok=True)
        for i, video in enumerate(pairs):
            write_video(video, directory / f"recon_{i}.mp4")
        contact_sheet(pairs, [f"clip {i}: input / reconstruction" for i in range(4)],
                      directory / "contact_sheet.png")


# The stages `patchflow train STAGE` knows, by name (as DiT's DiT_models names its configs).
STAGES: dict[str, type[Stage]] = {"dit": DiTStage, "vae": VAEStage}
