"""VideoPipeline on a tiny random model: every task, reproducibility, batching, saving, bad input."""

import inspect
import json
import warnings

import numpy as np
import pytest
import torch

import patchflow
from patchflow.models.dit import DiT, dit_config
from patchflow.pipelines.pipeline import VideoPipeline
from patchflow.pipelines.inputs import InputError
from patchflow.pipelines.tasks import fill_unknown, image_frames, latent_frame_mask, place_conditions
from patchflow.models.text import TinyTextEncoder, load_text_encoder
from patchflow.models.vae import VAE_PRESETS, VideoVAE

T, H, W = 9, 16, 16  # the tiny model's trained length and size: 3 latent frames of 4x4 (2x2 patch grid)
FAST = dict(num_inference_steps=2, progress=False)


def _build() -> VideoPipeline:
    torch.manual_seed(0)
    vae = VideoVAE(VAE_PRESETS["tiny"]())
    dit = DiT(dit_config("tiny", in_channels=4, text_dim=64))
    with torch.no_grad():  # the zero-initialised output layers would make v = 0: give every weight a value
        for p in dit.parameters():
            p.normal_(0.0, 0.05)
    return VideoPipeline(dit, vae, load_text_encoder("tiny"), text_encoder_spec="tiny",
                         defaults={"num_frames": T, "height": H, "width": W, "num_inference_steps": 2,
                                   "guidance_scale": 2.0})


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(the pipeline built from live modules, the folder it was saved to)."""
    pipe = _build()
    folder = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(folder)
    return pipe, folder


@pytest.fixture(scope="module")
def pipe(saved):
    return VideoPipeline.from_pretrained(saved[1])


def _clip(n, seed=0, h=H, w=W):
    return np.random.RandomState(seed).randint(0, 256, (n, h, w, 3), dtype=np.uint8)


def _round_trip(pipe, frames):
    """The VAE round trip of uint8 [T, H, W, 3] on its own."""
    return pipe.decode_latents(pipe.encode_video(frames[None]))[0].astype(int)


def _final_latents(pipe, **kwargs):
    """(output video, the latents after the last sampler step [B, C, T', H', W'])."""
    seen = []
    video = pipe(callback_on_step_end=lambda step, t, lat: seen.append((step, t, lat)), **kwargs)
    return video, seen


# ---------------------------------------------------------------- shapes and outputs
def test_text_to_video_image_and_output_types(pipe):
    video = pipe("a red circle moving right", seed=0, **FAST)
    assert video.shape == (T, H, W, 3) and video.dtype == np.uint8
    assert pipe("a red circle", num_frames=1, seed=0, **FAST).shape == (1, H, W, 3)  # text-to-image
    assert pipe(["a", "b", "c"], seed=0, **FAST).shape == (3, T, H, W, 3)
    pt = pipe("a red circle moving right", seed=0, output_type="pt", **FAST)
    assert pt.shape == (3, T, H, W) and pt.dtype == torch.float32 and -1 <= pt.min() <= pt.max() <= 1
    assert np.array_equal(((pt.permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy(), video)
    pil = pipe("a red circle moving right", seed=0, output_type="pil", **FAST)
    assert len(pil) == T and pil[0].size == (W, H)
    assert pipe("x", height=24, width=32, seed=0, **FAST).shape == (T, 24, 32, 3)


def test_seeds_reproduce_and_generators(pipe):
    a = pipe("a blue square", seed=5, **FAST)
    assert np.array_equal(a, pipe("a blue square", seed=5, **FAST))
    assert not np.array_equal(a, pipe("a blue square", seed=6, **FAST))
    assert np.array_equal(a, pipe("a blue square", generator=torch.Generator().manual_seed(5), **FAST))
    assert not np.array_equal(a, pipe("a green square", seed=5, **FAST))  # the text matters


def test_batched_equals_one_by_one(pipe):
    prompts = ["a red circle moving right", "a large blue square moving up on a white background"]
    batch = pipe(prompts, seed=3, negative_prompt="blurry", **FAST).astype(int)
    for b, prompt in enumerate(prompts):
        alone = pipe(prompt, seed=3 + b, negative_prompt="blurry", **FAST).astype(int)
        assert np.abs(batch[b] - alone).max() <= 1
    clip = _clip(5)
    batch = pipe(prompts, video=clip, extend="forward", num_frames=13, seed=[4, 9], **FAST).astype(int)
    alone = pipe(prompts[1], video=clip, extend="forward", num_frames=13, seed=9, **FAST).astype(int)
    assert np.abs(batch[1] - alone).max() <= 1


def test_callback_and_heun(pipe):
    _, seen = _final_latents(pipe, prompt="x", seed=0, sampler="heun", num_inference_steps=3, progress=False)
    assert [s for s, _, _ in seen] == [0, 1, 2] and seen[-1][1] == 0.0
    assert seen[-1][2].shape == (1, 4, 3, 4, 4)  # [B, C, T', H', W']


# ---------------------------------------------------------------- tasks reproduce their given frames
def test_start_conditions_are_the_vae_round_trip(pipe):
    img, clip = _clip(1, 1)[0], _clip(5, 2)
    video = pipe("x", image=img, seed=0, **FAST).astype(int)  # image-to-video: frame 0 is its own latent
    assert np.abs(video[0] - _round_trip(pipe, img[None])[0]).max() <= 1
    video = pipe("x", video=clip, extend="forward", num_frames=13, seed=0, **FAST).astype(int)
    assert np.abs(video[:5] - _round_trip(pipe, clip)).max() <= 1  # causal decoder: the start is exact
    assert np.abs(video[5:9] - _round_trip(pipe, clip)[1:5]).max() > 10  # the rest is generated
    video = pipe("x", video=clip, end_video=_clip(4, 3), num_frames=13, seed=0, **FAST).astype(int)
    assert video.shape == (13, H, W, 3) and np.abs(video[:5] - _round_trip(pipe, clip)).max() <= 1


@pytest.mark.parametrize("task", ["image_frame", "backward", "connect"])
def test_given_latent_frames_are_reimposed_clean(pipe, task):
    """Frames after the start decode with the generated frames before them as context (causal decoder),
    so their pixels are checked where they are exact: the final latents equal the encoded canvas."""
    img, a, b = _clip(1, 4)[0], _clip(5, 5), _clip(4, 6)
    kwargs = {"image_frame": dict(image=img, image_frame=6, num_frames=T),
              "backward": dict(video=b, extend="backward", num_frames=T),
              "connect": dict(video=a[:1], end_video=b, num_frames=T)}[task]
    video, seen = _final_latents(pipe, prompt="x", seed=0, **kwargs, **FAST)
    canvas, given = place_conditions(1, kwargs["num_frames"], H, W, 4, image=[img] if "image" in kwargs else None,
                                     image_frame=kwargs.get("image_frame", 0), video=[kwargs["video"]]
                                     if "video" in kwargs else None, extend=kwargs.get("extend"),
                                     end_video=[b] if task == "connect" else None)
    lat = latent_frame_mask(given, 4)
    encoded = pipe.encode_video(fill_unknown(canvas, given))
    final = seen[-1][2]
    assert torch.allclose(final[:, :, lat], encoded[:, :, lat], atol=1e-5)
    assert not torch.allclose(final[:, :, ~lat], encoded[:, :, ~lat], atol=0.1)
    if task == "image_frame":  # the image is held for its latent group, frames 5..8
        assert list(image_frames(6, 4)) == [5, 6, 7, 8] and lat.tolist() == [False, False, True]


def test_edit_strength_bounds(pipe):
    clip = _clip(9, 7)
    kept = pipe("x", video=clip, strength=0.0, seed=0, **FAST).astype(int)
    assert np.abs(kept - _round_trip(pipe, clip)).max() <= 1  # strength 0: the round trip
    new = pipe("x", video=clip, strength=1.0, seed=0, **FAST)
    assert np.array_equal(new, pipe("x", num_frames=9, seed=0, **FAST))  # strength 1: the clip is ignored
    half = pipe("x", video=clip, strength=0.5, seed=0, **FAST).astype(int)
    assert np.abs(half - kept).mean() < np.abs(new.astype(int) - kept).mean()  # nearer the source
    assert pipe("x", video=_clip(11), strength=0.3, seed=0, **FAST).shape == (9, H, W, 3)  # rounded down


def test_loop_regenerates_the_end_into_the_start(pipe):
    plain = pipe("x", seed=2, **FAST)
    looped, seen = _final_latents(pipe, prompt="x", seed=2, loop=True, **FAST)
    # T = 9 in a 9-frame window: context c = 1, regenerate g = 4, then e = 4 frames of the start
    assert np.array_equal(looped[:5], plain[:5]) and not np.array_equal(looped[5:], plain[5:])
    loop_pass = seen[-1][2]  # latents of the transition window [c | g | e] = 3 latent frames
    start = pipe.encode_video(fill_unknown(np.concatenate([plain[None, 4:5], np.zeros_like(plain[None, :4]),
                                                           plain[None, :4]], 1),
                                           torch.tensor([True] + [False] * 4 + [True] * 4)))
    assert torch.allclose(loop_pass[:, :, 2], start[:, :, 2], atol=1e-5)  # it ends on the video's start
    assert pipe("x", image=_clip(1)[0], loop=True, seed=0, **FAST).shape == (T, H, W, 3)


def test_long_video_runs_in_windows_with_bounded_memory(pipe):
    tokens, decoded = [], []
    h1 = pipe.transformer.register_forward_hook(lambda m, args, out: tokens.append(args[0].shape[1]))
    h2 = pipe.vae.decoder.register_forward_hook(lambda m, args, out: decoded.append(args[0].shape[2]))
    try:
        long = pipe("x", num_frames=3 * (T - 1) + 1, seed=1, guidance_scale=1.0, **FAST)  # 25 frames
    finally:
        h1.remove()
        h2.remove()
    assert long.shape == (25, H, W, 3)
    one_window = 3 * 2 * 2  # latent frames x patch grid of the trained 9-frame clip
    assert max(tokens) == one_window and max(decoded) == 3  # never more than one window at a time
    assert np.array_equal(long[:T], pipe("x", seed=1, guidance_scale=1.0, **FAST))  # window 1 = a normal clip
    back = pipe("x", video=_clip(4), extend="backward", num_frames=25, seed=0, **FAST)
    assert back.shape == (25, H, W, 3)
    conn = pipe("x", video=_clip(5), end_video=_clip(4, 1), num_frames=25, seed=0, **FAST)
    assert np.abs(conn[:5].astype(int) - _round_trip(pipe, _clip(5))).max() <= 1


def test_a_checked_request_is_what_the_call_runs(pipe):
    # check_inputs does every check and decoding once; run generates it; __call__ is the two in a row.
    req = pipe.check_inputs("a red circle", num_frames=3 * (T - 1) + 1, seed=2, guidance_scale=1.0, **FAST)
    assert req.windows == [(0, 9), (4, 13), (8, 17), (12, 21), (16, 25)]  # each starts on the last one's 2nd half
    assert req.total_steps == 5 * 2
    assert req.notes == [] and req.task == "text-to-video"
    assert np.array_equal(pipe.run(req), pipe("a red circle", num_frames=25, seed=2, guidance_scale=1.0, **FAST))
    looped = pipe.check_inputs("x", loop=True, seed=0, **FAST)
    assert looped.total_steps == 2 * 2  # the clip, then the loop's transition pass
    with pytest.raises(InputError, match="nearest valid: 9"):
        pipe.check_inputs("x", num_frames=8, **FAST)
    rounded = pipe.check_inputs("x", num_frames=8, round_frames=True, **FAST)  # a command line's choice
    assert rounded.num_frames == 9 and rounded.notes == ["8 frames rounded to 9 (the model takes 1 + 4k "
                                                         "(1, 5, 9, 13, 17, ...) frames)"]


# ---------------------------------------------------------------- saving and loading
def test_save_load_round_trip(saved, pipe, tmp_path):
    live, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder"] == "tiny" and index["defaults"]["num_frames"] == T
    assert np.array_equal(live("a red circle", seed=0, **FAST), pipe("a red circle", seed=0, **FAST))
    pipe.save_pretrained(tmp_path / "run" / "final")  # a training run folder loads from its final/
    again = VideoPipeline.from_pretrained(tmp_path / "run")
    assert np.array_equal(again("a red circle", seed=0, **FAST), pipe("a red circle", seed=0, **FAST))



def test_noisy_expert_takes_the_steps_above_its_boundary_and_is_saved(tmp_path):
    base = _build()
    expert = DiT(dit_config("tiny", in_channels=4, text_dim=64, frame_position=True))
    with torch.no_grad():
        for p in expert.parameters():
            p.normal_(0.0, 0.05)
    calls = []
    for name, model in (("base", base.transformer), ("expert", expert)):
        model.register_forward_hook(lambda m, args, out, name=name: calls.append((name, float(args[1].max()))))
    plain = base("a red circle", seed=0, num_inference_steps=4, progress=False)
    calls.clear()
    pipe = base.with_noisy_expert(expert, boundary=0.6)
    mixed = pipe("a red circle", seed=0, num_inference_steps=4, progress=False)
    assert calls and all((name == "expert") == (t >= 0.6) for name, t in calls)   # each step goes to one model
    assert {name for name, _ in calls} == {"base", "expert"} and not np.array_equal(plain, mixed)
    pipe.save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["noisy_expert"] == {"transformer": "noisy_expert", "boundary": 0.6}
    loaded = VideoPipeline.from_pretrained(tmp_path / "m")
    assert loaded.noisy_expert.config.frame_position and loaded.noisy_boundary == 0.6
    assert np.array_equal(loaded("a red circle", seed=0, num_inference_steps=4, progress=False), mixed)
    with pytest.raises(ValueError, match="patch_size"):
        base.with_noisy_expert(DiT(dit_config("tiny", in_channels=4, text_dim=64, patch_size=(1, 1, 1))))
    with pytest.raises(ValueError, match="noisy_boundary"):
        base.with_noisy_expert(expert, boundary=1.0)

def test_guidance_interval_default_is_saved_and_leaves_the_last_steps_unguided(tmp_path):
    pipe = _build()
    rows = []  # the rows of each transformer call: doubled under guidance (cond + uncond)
    hook = pipe.transformer.register_forward_hook(lambda m, args, out: rows.append((float(args[1].max()), len(args[0]))))
    whole = pipe("a red circle", seed=0, num_inference_steps=4, progress=False)
    assert len({r for _, r in rows}) == 1  # every step guided (the default interval is [0, 1])
    guided_rows = rows[0][1]
    pipe.defaults["guidance_interval"] = (0.5, 1.0)
    pipe.save_pretrained(tmp_path / "m")
    hook.remove()
    loaded = VideoPipeline.from_pretrained(tmp_path / "m")
    assert list(loaded.defaults["guidance_interval"]) == [0.5, 1.0]
    rows.clear()
    loaded.transformer.register_forward_hook(lambda m, args, out: rows.append((float(args[1].max()), len(args[0]))))
    part = loaded("a red circle", seed=0, num_inference_steps=4, progress=False)
    assert [(t, r == guided_rows) for t, r in rows] == [(1.0, True), (0.75, True), (0.5, True), (0.25, False)]
    assert not np.array_equal(whole, part)
    assert np.array_equal(whole, loaded("a red circle", seed=0, num_inference_steps=4, progress=False,
                                        guidance_interval=(0, 1)))


def test_trained_text_encoder_is_saved_with_the_model(tmp_path):
    pipe = _build()
    pipe.transformer.train()  # a training loop's live modules: eval while sampling, then their mode back
    pipe.vae.eval()
    modes = []
    hook = pipe.transformer.register_forward_hook(lambda m, args, out: modes.append(m.training))
    pipe("x", seed=0, **FAST)
    hook.remove()
    assert modes and not any(modes) and pipe.transformer.training and not pipe.vae.training
    with torch.no_grad():
        pipe.text_encoder.word.weight.add_(0.1)  # as if trained: the name "tiny" no longer rebuilds it
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["text_encoder"] == "text_encoder"
    loaded = VideoPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.text_encoder, TinyTextEncoder)
    assert torch.equal(loaded.text_encoder.word.weight, pipe.text_encoder.word.weight)


def test_missing_models_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHFLOW_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="shipped model is missing.*--model"):
        VideoPipeline.from_pretrained()
    with pytest.raises(FileNotFoundError, match="not a pipeline folder"):
        VideoPipeline.from_pretrained(tmp_path)


def test_devices_tiling_and_top_level_api(pipe, tmp_path):
    ref = pipe("x", seed=0, **FAST)
    pipe.enable_model_cpu_offload()  # no GPU here: a no-op
    assert pipe.device.type == "cpu" and np.array_equal(pipe("x", seed=0, **FAST), ref)
    pipe.enable_vae_tiling(tile_frames=4, tile_size=None)  # time chunks with causal caches: exact
    try:
        assert np.abs(pipe("x", seed=0, **FAST).astype(int) - ref).max() <= 1
    finally:
        pipe.disable_vae_tiling()
    assert patchflow.VideoPipeline is VideoPipeline
    path = patchflow.export_to_video(ref, tmp_path / "x.gif", fps=8)
    assert path.is_file()


# ---------------------------------------------------------------- bad input, checked before any work
BAD = [
    (dict(num_frames=10), ValueError, "num_frames must be 1 \\+ 4k \\(1, 5, 9, 13, 17, ...\\) .*got 10; nearest valid: 9"),
    (dict(height=20), ValueError, "height must be a multiple of 8 .*got 20; nearest valid: 24"),
    (dict(width=0), ValueError, "width must be a positive int"),
    (dict(prompt=""), ValueError, "prompt is empty"),
    (dict(prompt=["a", "  "]), ValueError, "prompt 1 is empty"),
    (dict(prompt=[]), TypeError, "non-empty list"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps must be a positive int"),
    (dict(guidance_scale=-1), ValueError, "guidance_scale"),
    (dict(guidance_interval=(0.5, 0.2)), ValueError, "0 <= lo <= hi <= 1, got \\(0.5, 0.2\\)"),
    (dict(guidance_interval=0.3), ValueError, "two noise levels \\(lo, hi\\), got 0.3"),
    (dict(sampler="rk4"), ValueError, "sampler must be one of"),
    (dict(output_type="gif"), ValueError, "output_type"),
    (dict(strength=0.5), ValueError, "strength= needs video="),
    (dict(video="CLIP", strength=1.5), ValueError, "strength must be a number in \\[0, 1\\] .*got 1.5"),
    (dict(video="CLIP", extend="sideways"), ValueError, "extend must be 'forward' or 'backward'"),
    (dict(video="CLIP"), ValueError, "exactly one of extend"),
    (dict(video="CLIP", extend="forward", num_frames=9), ValueError, "9 frames, as many as the result"),
    (dict(video="CLIP", end_video="CLIP", num_frames=17), ValueError, "18 frames, as many as the result"),
    (dict(video="CLIP", strength=0.5, num_frames=13), ValueError, "fewer than num_frames=13"),
    (dict(image="IMG", image_frame=9), ValueError, "image_frame must be an int in \\[0, num_frames=9\\)"),
    (dict(image_frame=2), ValueError, "image_frame=2 needs image="),
    (dict(loop=True, video="CLIP", extend="backward", num_frames=13), ValueError, "loop=True works with"),
    (dict(loop=True, num_frames=1), ValueError, "loop=True needs num_frames >= 5"),
    (dict(image="IMG", image_frame=6, loop=True), ValueError, "regenerates the last 4 frames"),
    (dict(image="missing.png"), FileNotFoundError, "missing.png"),
    (dict(video="missing.mp4", extend="forward"), FileNotFoundError, "missing.mp4"),
    (dict(image="BROKEN"), ValueError, "broken.png: cannot be read as an image"),
    (dict(seed="a"), ValueError, "seed must be an int"),
    (dict(prompt=["a", "b"], image=["IMG"]), ValueError, "image is a list of 1, but there are 2 prompts"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_is_named_before_any_work(pipe, tmp_path, monkeypatch, kwargs, error, message):
    calls = []
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a: calls.append(a))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    values = {"CLIP": _clip(9), "IMG": _clip(1)[0], "BROKEN": tmp_path / "broken.png"}
    kwargs = {k: (values.get(v, v) if isinstance(v, str) else v) for k, v in kwargs.items()}
    kwargs = {k: ([values.get(x, x) for x in v] if k == "image" and isinstance(v, list) else v)
              for k, v in kwargs.items()}
    kwargs.setdefault("prompt", "a red circle")
    with pytest.raises(error, match=message) as info:
        pipe(**{**FAST, **kwargs})
    assert not calls  # nothing was encoded
    if error is not FileNotFoundError:  # every rule names the argument it refuses (serve maps it to a field)
        assert isinstance(info.value, InputError)
        assert info.value.field in inspect.signature(VideoPipeline.__call__).parameters
        assert info.value.field == FIELD_OF.get(message, next(iter(kwargs)))


FIELD_OF = {  # BAD cases whose field is not the first argument given
    "9 frames, as many as the result": "video", "18 frames, as many as the result": "video",
    "fewer than num_frames=13": "video", "image_frame must be an int in \\[0, num_frames=9\\)": "image_frame",
    "loop=True works with": "loop", "loop=True needs num_frames >= 5": "loop",
    "regenerates the last 4 frames": "loop", "image is a list of 1, but there are 2 prompts": "image",
    "strength must be a number in \\[0, 1\\] .*got 1.5": "strength", "extend must be 'forward' or 'backward'": "extend",
    "exactly one of extend": "video", "broken.png: cannot be read as an image": "image",
}


def test_mismatched_sizes_are_resized_with_a_note_and_partial_frames_warn(pipe):
    with pytest.warns(UserWarning, match="image is 40x24, resized .* to 16x16"):
        video = pipe("x", image=_clip(1, h=24, w=40)[0], height=16, width=16, seed=0, **FAST)
    assert video.shape == (T, H, W, 3)
    with pytest.warns(UserWarning, match="given frames \\[5\\] share a latent frame"):
        pipe("x", video=_clip(6), extend="forward", num_frames=13, seed=0, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clip of 1 + 4k frames covers whole latent frames: no warning
        pipe("a red circle", video=_clip(5), extend="forward", num_frames=13, seed=0, **FAST)  # (a world prompt)
