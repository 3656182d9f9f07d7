"""Caption sampling, caption dropout and prompt expansion to the plain Shapes World form."""

import itertools
import random
import shutil
from collections import Counter

import pytest
import torch

from patchflow.shapes.captions import captions, short_caption
from patchflow.shapes.world import (
    BACKGROUNDS, COLORS, MOTIONS, SHAPES, SIZES, parse_prompt, sample_scene, scene_from_prompt,
)
from patchflow.pipelines.prompts import (
    PromptExpander, RuleExpander, TransformersExpander, choose_caption, drop_caption, load_prompt_expander,
)
from patchflow.shapes.prompts import drop_attribute, expand_prompt

PARAPHRASES = {
    "tiny crimson ball heading left on a dark background": "a small red circle moving left on a black background",
    "a big violet box rising": "a large purple square moving up",
    "a blue disc bouncing around on grey": "a blue circle bouncing on a gray background",
    "A scarlet dot going to the left": "a red circle moving left",
    "little green cube going up on a light background": "a small green square moving up on a white background",
    "a yellow triangle falling": "a yellow triangle moving down",
    "an orange block dropping against a bright backdrop": "an orange square moving down on a white background",
    "a cyan ball that is not moving": "a cyan circle standing still",
    "static purple pyramid on a grey background": "a purple triangle standing still on a gray background",
    "a motionless red square": "a red square standing still",
    "a green circle, still, on black": "a green circle standing still on a black background",
    "huge blue ball expanding": "a large blue circle growing",
    "a yellow cube getting bigger on a dark backdrop": "a yellow square growing on a black background",
    "a red triangle getting smaller": "a red triangle shrinking",
    "an orange disc ricocheting": "an orange circle bouncing",
    "a purple box bouncing off the walls": "a purple square bouncing",
    "a blue ball moving leftward": "a blue circle moving left",
    "red ball heads left": "a red circle moving left",
    "a green box moving from left to right": "a green square moving right",
    "a cyan cube travelling towards the top of the screen": "a cyan square moving up",
    "a big red ball rolling to the right and a tiny blue box sitting still on a white background":
        "a large red circle moving right and a small blue square standing still on a white background",
    "a golden ball with a violet cube falling": "a yellow circle standing still and a purple square moving down",
    "teal dot rising plus a crimson pyramid shrinking on a pitch-dark background":
        "a cyan circle moving up and a red triangle shrinking on a black background",
    "Small Red Circle Moving Right On A Black Background": "a small red circle moving right on a black background",
}


@pytest.mark.parametrize("prompt,plain", PARAPHRASES.items())
def test_paraphrases_expand_to_plain_captions(prompt, plain):
    out = expand_prompt(prompt)
    assert out == plain
    parse_prompt(out)  # the world's grammar accepts it


def _training_captions(plain: str) -> set[str]:
    """Every caption training can show for the scene of `plain`: each size and background its
    open parts can take, all three styles, detailed ones over many draws."""
    spec = parse_prompt(plain)
    forms = set()
    for sizes in itertools.product(*[[o.size] if o.size else list(SIZES) for o in spec.objects]):
        for background in [spec.background] if spec.background else list(BACKGROUNDS):
            objects = " and ".join(f"a {size} {o.color} {o.shape} {o.motion}" for size, o in zip(sizes, spec.objects))
            record = scene_from_prompt(f"{objects} on a {background} background")
            for seed in range(12):
                forms.update(captions(record, seed).values())
    return forms


def test_paraphrases_are_a_real_test_set():
    # 20+ distinct prompts that expand to their plain captions, which together name every colour,
    # shape, motion, size and background of the world ...
    assert len(PARAPHRASES) >= 20
    specs = []
    for prompt, plain in PARAPHRASES.items():
        assert expand_prompt(prompt) == plain, prompt
        specs.append(parse_prompt(plain))
    objects = [o for spec in specs for o in spec.objects]
    assert {o.color for o in objects} == set(COLORS) and {o.shape for o in objects} == set(SHAPES)
    assert {o.motion for o in objects} == set(MOTIONS) and {o.size for o in objects} >= set(SIZES)
    assert {spec.background for spec in specs} >= set(BACKGROUNDS)
    assert any(len(spec.objects) == 2 for spec in specs)
    # ... and none of them is a caption training uses: its expansion would be a fixed point, testing nothing
    for prompt, plain in PARAPHRASES.items():
        assert prompt not in _training_captions(plain), prompt


def test_plain_captions_are_fixed_points_and_short_captions_expand():
    rng = random.Random(0)
    for _ in range(60):
        scene = sample_scene(rng, split="all")
        plain = captions(scene)["plain"]
        assert expand_prompt(plain) == plain
        expected = " and ".join(f"a{'n' if o.color[0] in 'aeiou' else ''} {o.color} {o.shape} {o.motion}"
                                for o in scene.objects)
        assert expand_prompt(short_caption(scene)) == expected


@pytest.mark.parametrize("prompt", [
    "", "a dog running on the beach", "a cat playing with a red ball", "a red ball and a red box",
    "a red car moving left", "a blue ball on a red background", "a red ball moving left and up",
    "a red ball, a blue box and a green dot", "a moving ball",
])
def test_prompts_outside_the_world_are_unchanged(prompt):
    assert expand_prompt(prompt) == prompt


def test_defaults_fill_open_size_and_background():
    out = expand_prompt("a red ball going up", defaults={"size": "small", "background": "black"})
    assert out == "a small red circle moving up on a black background"
    assert expand_prompt("big red ball on white", {"size": "small"}) == "a large red circle standing still on a white background"
    assert RuleExpander({"background": "gray"})("a red ball") == "a red circle standing still on a gray background"
    with pytest.raises(ValueError, match="defaults"):
        expand_prompt("a red ball", defaults={"size": "medium"})
    with pytest.raises(TypeError):
        expand_prompt(None)


def test_choose_caption_follows_weights_and_skips_missing_styles():
    caps = {"short": "S", "plain": "P", "detailed": "D"}
    rng = random.Random(0)
    counts = Counter(choose_caption(caps, rng, {"short": 0.2, "plain": 0.5, "detailed": 0.3}) for _ in range(6000))
    assert abs(counts["P"] / 6000 - 0.5) < 0.03 and abs(counts["S"] / 6000 - 0.2) < 0.03
    assert choose_caption({"plain": "P"}, rng) == "P"  # real data with a single caption
    a = [choose_caption(caps, random.Random(5)) for _ in range(3)]
    assert a == [choose_caption(caps, random.Random(5)) for _ in range(3)]
    with pytest.raises(ValueError, match="no caption style"):
        choose_caption({"other": "x"}, rng)
    with pytest.raises(ValueError, match=">= 0"):
        choose_caption(caps, rng, {"plain": -1})


def test_drop_caption_rate():
    rng = random.Random(1)
    dropped = sum(drop_caption("a red circle", 0.1, rng) == "" for _ in range(10000))
    assert 850 < dropped < 1150
    assert drop_caption("x", 0.0, rng) == "x" and drop_caption("x", 1.0, rng) == ""
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_caption("x", 1.5, rng)


def test_drop_attribute_leaves_out_one_attribute_at_a_time():
    plain = "a small red circle moving right on a black background"
    rng = random.Random(0)
    seen = Counter(drop_attribute(plain, rng) for _ in range(800))
    assert set(seen) == {"a red circle moving right on a black background",
                         "a small circle moving right on a black background",
                         "a small red circle on a black background",
                         "a small red circle moving right"}
    assert min(seen.values()) > 150  # each of the four about equally often
    two = "a small red circle moving right and a large blue square standing still on a white background"
    for _ in range(50):
        out = drop_attribute(two, rng)
        # size or colour: one word fewer; a motion: two; the background ("on a white background"): four
        assert len(two.split()) - len(out.split()) in {1, 2, 4}
        assert "circle" in out and "square" in out  # the shapes always stay
    assert drop_attribute("a red circle moving left", random.Random(3)) in {
        "a circle moving left", "a red circle"}
    with pytest.raises(ValueError, match="did not understand"):
        drop_attribute("a dragon over a city", rng)


def test_load_prompt_expander_specs(tmp_path):
    assert load_prompt_expander(None)("a red ball") == "a red ball"
    assert type(load_prompt_expander("none")) is PromptExpander
    assert load_prompt_expander("rules")("a red ball going up") == "a red circle moving up"
    with pytest.raises(FileNotFoundError, match="neither"):
        load_prompt_expander(str(tmp_path / "missing"))


def test_transformers_expander_runs_offline(tmp_path, monkeypatch):
    import transformers
    from patchflow.models.text import minilm_path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)  # a fixed random model: its greedy reply is fixed too
    config = transformers.GPT2Config(vocab_size=30522, n_positions=256, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=101, eos_token_id=102)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, tmp_path / name)  # any local tokenizer will do for a random model
    expander = load_prompt_expander(str(tmp_path))
    assert isinstance(expander, TransformersExpander)
    expander.max_new_tokens = 8
    out = expander("a red ball")
    assert isinstance(out, str) and out != "a red ball" and out == expander("a red ball")  # greedy: deterministic
    assert "Caption:" not in out
