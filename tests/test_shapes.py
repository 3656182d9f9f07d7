"""Shapes World: the spec's rules, determinism, captions and the parser."""

import random

import numpy as np
import pytest
import torch

from patchflow.shapes.captions import captions, plain_caption, translation_captions
from patchflow.data.datasets import ShapesDataset
from patchflow.shapes.world import (
    ALL_COMBOS, BACKGROUNDS, COLORS, HELDOUT_COMBOS, TRAIN_COMBOS, is_heldout, parse_prompt, render, sample_scene,
    scene_from_prompt, trajectory,
)


def test_render_shape_palette_and_determinism():
    a = render("a small red circle moving right on a black background", 48, 80, 17, seed=3)
    b = render("a small red circle moving right on a black background", 48, 80, 17, seed=3)
    assert a.shape == (17, 48, 80, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    colours = {tuple(c) for c in a.reshape(-1, 3)}
    assert colours == {COLORS["red"], BACKGROUNDS["black"]}


def test_sizes_follow_spec():
    v = render("a large blue square standing still on a white background", 100, 200, 1)
    side = np.sqrt((v[0] == COLORS["blue"]).all(-1).sum())
    assert abs(side - 32) <= 1.5  # 32% of min(100, 200)


def test_translation_speed_and_no_edge_contact():
    for seed in range(50):
        record = scene_from_prompt("a large red square moving right on a black background", seed)
        x, y, side = trajectory(record.objects[0], 64, 64, 17)
        assert np.allclose(np.diff(x), 0.25 / 8)  # 0.25 canvas per second at 8 fps, no bounce
        half = side[0] / 2 / 64
        assert x.min() - half > 0 and x.max() + half < 1


def test_bouncing_reflects_within_17_frames_and_long_clips_stay_inside():
    for seed in range(50):
        record = scene_from_prompt("a small green circle bouncing on a gray background", seed)
        x, _, side = trajectory(record.objects[0], 64, 64, 17)
        assert (np.sign(np.diff(x)) != np.sign(np.diff(x))[0]).any()
        x, y, side = trajectory(scene_from_prompt("a large red triangle moving up", seed).objects[0], 64, 64, 200)
        assert 0 <= y.min() and y.max() <= 1


def test_growing_and_two_objects_drawn_in_order():
    v = render("a small yellow square growing and a large cyan circle standing still on a black background",
               64, 64, 17, seed=1)
    area = (v == COLORS["yellow"]).all(-1).sum((1, 2))
    assert area[-1] > area[0]
    spec = parse_prompt("a small yellow square growing and a large cyan circle standing still")
    assert [o.color for o in spec.objects] == ["yellow", "cyan"]


def test_sampler_statistics_and_split():
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(2000)]
    share_two = np.mean([len(s.objects) == 2 for s in scenes])
    assert 0.26 < share_two < 0.34
    assert all(not is_heldout(o) for s in scenes for o in s.objects)
    assert all(len({o.color for o in s.objects}) == len(s.objects) for s in scenes)
    held = [sample_scene(i, split="heldout") for i in range(200)]
    assert all(is_heldout(s.objects[0]) for s in held)


def test_heldout_split_is_compositional():
    assert 0.08 < len(HELDOUT_COMBOS) / len(ALL_COMBOS) < 0.25
    train = set(TRAIN_COMBOS)
    for c, s, m in HELDOUT_COMBOS:  # every pair of a held-out triple is seen in training
        assert any(t[0] == c and t[1] == s for t in train)
        assert any(t[0] == c and t[2] == m for t in train)
        assert any(t[1] == s and t[2] == m for t in train)


def test_captions_round_trip_and_lengths():
    for i in range(300):
        record = sample_scene(i, split="all")
        caps = captions(record, seed=i)
        assert plain_caption(parse_prompt(caps["plain"])) == caps["plain"]
        assert 15 <= len(caps["detailed"].split()) <= 35
        assert caps["short"] == " and ".join(f"{o.color} {o.shape} {o.motion}" for o in record.objects)


@pytest.mark.parametrize("prompt,word", [
    ("a pink circle moving right", "pink"),
    ("a red hexagon moving right", "hexagon"),
    ("a red circle moving sideways", "sideways"),
    ("a red circle moving right on a purple background", "purple"),
    ("a red circle moving right quickly", "quickly"),
    ("a red circle", "<end of prompt>"),
])
def test_parser_names_the_word(prompt, word):
    with pytest.raises(ValueError, match=word):
        render(prompt)


def test_bad_canvas():
    with pytest.raises(ValueError, match="height=8"):
        render("a red circle moving right", height=8)
    with pytest.raises(ValueError, match="frames=0"):
        render("a red circle moving right", frames=0)


def test_dataset_any_size_and_deterministic():
    ds = ShapesDataset(20, sizes=[(32, 96), (64, 64)], frames=[1, 9, 17], seed=5)
    items = [ds[i] for i in range(8)]
    assert {tuple(it["video"].shape[1:]) for it in items} > {(1, 32, 96)} or len(items) == 8
    for it in items:
        v = it["video"]
        assert v.shape[0] == 3 and v.dtype == torch.float32 and -1 <= v.min() and v.max() <= 1
        assert set(it["captions"]) == {"short", "plain", "detailed"}
    assert torch.equal(ds[3]["video"], ShapesDataset(20, sizes=[(32, 96), (64, 64)], frames=[1, 9, 17], seed=5)[3]["video"])
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(split="test")


def test_dataset_focus_draws_more_of_one_size_and_shape():
    def small_triangle(item):
        objects = item["record"]["objects"]
        return len(objects) == 1 and (objects[0]["size"], objects[0]["shape"]) == ("small", "triangle")

    plain = ShapesDataset(400, seed=2)
    focused = ShapesDataset(400, seed=2, focus="small triangle", focus_share=0.5)
    share = np.mean([small_triangle(focused[i]) for i in range(400)])
    assert np.mean([small_triangle(plain[i]) for i in range(400)]) < 0.15 and 0.45 < share < 0.65
    assert all(small_triangle(it) for it in (ShapesDataset(20, focus="small triangle", focus_share=1.0)[i]
                                            for i in range(20)))
    assert all(it["record"]["objects"][0]["shape"] == "triangle"
               for it in (ShapesDataset(20, focus="triangle", focus_share=1.0)[i] for i in range(20)))
    # no focus share: the same clips as without the option (caches and runs keep their data)
    unfocused = ShapesDataset(400, seed=2, focus="triangle", focus_share=0.0)
    assert all(torch.equal(plain[i]["video"], unfocused[i]["video"]) for i in range(10))
    assert torch.equal(focused[7]["video"], ShapesDataset(400, seed=2, focus="small triangle", focus_share=0.5)[7]["video"])
    for focus, share, message in [("big triangle", 0.5, "size and/or a shape"), ("", 0.5, "only with a focus"),
                                  ("small large", 0.5, "size and/or a shape"), ("circle triangle", 0.5, "size and/or"),
                                  ("triangle", 1.5, "in \\[0, 1\\]")]:
        with pytest.raises(ValueError, match=message):
            ShapesDataset(10, focus=focus, focus_share=share)


def test_translation_captions_are_training_triples_the_world_reads():
    # The narrow clips that teach direction must never show a held-out colour/shape/motion triple: a leak
    # of three such triples inflated the held-out row of every expert trained on the first version.
    every = translation_captions()
    assert len(every) == len(set(every)) == 2 * 3 * sum(m.startswith("moving ") for _, _, m in TRAIN_COMBOS)
    for caption in every:
        obj = scene_from_prompt(caption).objects[0]
        assert obj.motion.startswith("moving ") and not is_heldout(obj), caption
    some = translation_captions(["white"], ["large red square"])
    assert some == [f"a large red square moving {d} on a white background" for d in ("left", "right", "up")]  # down: held out
    with pytest.raises(ValueError, match="purple"):
        translation_captions(["purple"])
    with pytest.raises(ValueError, match="red squar"):
        translation_captions(objects=["large red squar"])
