"""Out-of-world prompts are told, not hidden: prompts.unknown_words and the pipeline's PromptWarning."""

import json
import random
import warnings

import numpy as np
import pytest
from tiny_models import random_tiny_dit

from patchflow.shapes.captions import captions
from patchflow.shapes.world import sample_scene
from patchflow.pipelines.pipeline import VideoPipeline
from patchflow.pipelines.prompts import PromptWarning, unknown_words_note
from patchflow.shapes.prompts import expand_prompt, unknown_words
from patchflow.models.text import load_text_encoder
from patchflow.models.vae import VAE_PRESETS, VideoVAE

pytestmark = pytest.mark.usefixtures("one_thread")

IN_WORLD = [  # paraphrases expand_prompt reads completely
    "tiny crimson ball heading left on a dark background",
    "a big violet box rising",
    "a blue disc bouncing around on grey",
    "A scarlet dot going to the left",
    "static purple pyramid on a grey background",
    "a yellow cube getting bigger on a dark backdrop",
    "a green box moving from left to right",
    "a cyan cube travelling towards the top of the screen",
    "a big red ball rolling to the right and a tiny blue box sitting still on a white background",
    "teal dot rising plus a crimson pyramid shrinking on a pitch-dark background",
    "Small Red Circle Moving Right On A Black Background",
]
OUT_OF_WORLD = {
    "a dragon flying over a city": ["dragon", "flying", "city"],
    "a dog running on the beach": ["dog", "running", "beach"],
    "a cat playing with a red ball": ["cat", "playing"],
    "a red ball rolling": ["rolling"],                      # a travel verb without a direction is no motion
    "a red car moving left": ["car"],
    "a blue ball on a forest background": ["forest"],       # a background outside the world
    "a dragon, another dragon and a DRAGON": ["dragon", "another"],  # each word once, in order
    "the dragon's 'lair'": ["dragon's", "lair"],            # quotes are not part of a word
    "un dragón rouge": ["un", "dragón", "rouge"],           # any alphabet
}


@pytest.mark.parametrize("prompt", IN_WORLD)
def test_prompts_expand_reads_have_no_unknown_words(prompt):
    assert expand_prompt(prompt) != prompt  # really read (rewritten) by the rules
    assert unknown_words(prompt) == []


@pytest.mark.parametrize("prompt,words", OUT_OF_WORLD.items())
def test_out_of_world_words_are_listed(prompt, words):
    assert unknown_words(prompt) == words
    assert expand_prompt(prompt) == prompt  # and such a prompt is never rewritten


def test_training_captions_of_every_style_are_known():
    rng = random.Random(0)
    for i in range(80):
        for style, caption in captions(sample_scene(rng, split="all"), seed=i).items():
            assert unknown_words(caption) == [], (style, caption)


def test_words_known_but_combined_outside_the_world_are_not_listed():
    # expand_prompt cannot read these (two red objects, a colour as background, no direction), but
    # every word is the world's: unknown_words judges words, not scenes
    for prompt in ("a red ball and a red box", "a blue ball on a red background", "a moving ball", ""):
        assert expand_prompt(prompt) == prompt and unknown_words(prompt) == []
    with pytest.raises(TypeError):
        unknown_words(None)


def test_note_names_the_words():
    assert unknown_words_note(["dragon", "city"]) == ("not understood by the Shapes World model: dragon, city "
                                                      "(the video still follows the words it knows)")


# ---------------------------------------------------------------- the pipeline
FAST = dict(num_frames=1, num_inference_steps=1, seed=0, progress=False)


@pytest.fixture(scope="module")
def pipe():
    text = load_text_encoder("tiny")
    return VideoPipeline(random_tiny_dit(text.dim, std=0.05), VideoVAE(VAE_PRESETS["tiny"]()), text,
                         text_encoder_spec="tiny", defaults={"num_frames": 9, "height": 16, "width": 16})


def test_pipeline_warns_once_and_still_generates(pipe):
    assert pipe.world == "shapes"  # the default: the built-in world
    with pytest.warns(PromptWarning, match=r"'a dragon flying over a city': not understood .*: dragon, flying, city"):
        video = pipe("a dragon flying over a city", **FAST)
    assert video.shape == (1, 16, 16, 3) and video.dtype == np.uint8
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        videos = pipe(["a dragon over a city", "a red ball rising", "a cat"], **FAST)
    told = [w for w in seen if issubclass(w.category, PromptWarning)]
    assert len(told) == 1 and videos.shape[0] == 3  # one warning per call, naming each prompt
    assert "'a dragon over a city': " in str(told[0].message) and "'a cat': " in str(told[0].message)
    assert "rising" not in str(told[0].message)


def test_pipeline_is_silent_for_world_prompts_other_worlds_and_unexpanded_prompts(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptWarning)
        pipe("tiny crimson ball heading left on a dark background", **FAST)
        pipe("a dragon flying over a city", expand_prompt=False, **FAST)  # prompts as written: not judged
        pipe.world = None  # a model of real footage
        try:
            pipe("a dragon flying over a city", **FAST)
        finally:
            pipe.world = "shapes"
    with pytest.raises(ValueError, match="world must be"):
        VideoPipeline(pipe.transformer, pipe.vae, pipe.text_encoder, world="footage")


def test_saved_world_from_index_and_training_run(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "model_index.json").read_text())["world"] == "shapes"
    assert VideoPipeline.from_pretrained(tmp_path / "a").world == "shapes"
    index = tmp_path / "a" / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "world": None}))
    assert VideoPipeline.from_pretrained(tmp_path / "a").world is None
    index.write_text(json.dumps({**json.loads(index.read_text()), "world": "mars"}))
    with pytest.raises(ValueError, match="world must be"):
        VideoPipeline.from_pretrained(tmp_path / "a")
    # a training run: the loop saves its pipeline with the world its captions came from, and the index
    # alone decides (the run's config.json is not read)
    run = tmp_path / "run"
    VideoPipeline(pipe.transformer, pipe.vae, pipe.text_encoder, world=None).save_pretrained(run / "final")
    (run / "config.json").write_text(json.dumps({"stage": "dit", "data": {"dataset": "shapes"}}))
    assert VideoPipeline.from_pretrained(run).world is None


def test_the_world_interface():
    # What the pipeline asks of a world, and nothing more: read a prompt, name unknown words, judge a video.
    from patchflow.shapes import get_world
    from patchflow.shapes.world import render

    world = get_world("shapes")
    assert world.expand_prompt("a tiny crimson ball heading left") == "a small red circle moving left"
    assert world.unknown_words("a dragon flying over a city") == ["dragon", "flying", "city"]
    prompt = "a large blue square moving up on a white background"
    assert world.judge(render(prompt), prompt).passed
    assert not world.judge(render("a large red circle moving up on a white background"), prompt).passed
    assert get_world(None) is None
    with pytest.raises(ValueError, match="world must be one of"):
        get_world("mars")
