"""The evaluator: ground truth passes, one changed attribute fails."""

import numpy as np
import pytest

from patchflow.shapes.captions import plain_caption
from patchflow.shapes.world import BACKGROUNDS, COLORS, SHAPES, render_scene, sample_scene
from patchflow.shapes.evaluate import evaluate_video, summarize


@pytest.mark.parametrize("height,width,frames,count", [(64, 64, 17, 300), (32, 48, 17, 60), (96, 40, 17, 60),
                                                       (64, 64, 33, 40), (128, 128, 17, 30)])
def test_ground_truth_passes(height, width, frames, count):
    results = [evaluate_video(render_scene(r, height, width, frames), r)
               for r in (sample_scene(i, split="all") for i in range(count))]
    assert summarize(results)["all"] >= 0.99


def _changed(record, attr, rng):
    """A prompt equal to the record's plain caption but for one attribute of the first object."""
    obj = record.objects[0]
    other_colors = [c for c in COLORS if c not in {o.color for o in record.objects}]
    swaps = {
        "color": lambda: (f" {obj.color} ", f" {rng.choice(other_colors)} "),
        "shape": lambda: (f" {obj.shape} ", f" {rng.choice([s for s in SHAPES if s != obj.shape])} "),
        "background": lambda: (f" {record.background} background",
                               f" {rng.choice([b for b in BACKGROUNDS if b != record.background])} background"),
        "motion": lambda: (f" {obj.motion}", " " + {"moving left": "moving right", "moving right": "moving left",
                                                    "moving up": "moving down", "moving down": "moving up",
                                                    "growing": "shrinking", "shrinking": "growing",
                                                    "standing still": "moving left", "bouncing": "standing still"}[obj.motion]),
    }
    old, new = swaps[attr]()
    caption = plain_caption(record)
    return caption.replace(old, new, 1)


@pytest.mark.parametrize("attr", ["color", "shape", "background", "motion"])
def test_one_changed_attribute_fails(attr):
    rng = np.random.default_rng(0)
    scenes = [sample_scene(i, split="all", num_objects=1) for i in range(80)]
    rejected = [not evaluate_video(render_scene(r), _changed(r, attr, rng)).passed for r in scenes]
    assert np.mean(rejected) >= 0.95, f"{attr}: only {np.mean(rejected):.0%} rejected"


def test_prompt_without_size_and_image():
    v = render_scene(sample_scene(1, num_objects=1), 64, 64, 1)
    r = sample_scene(1, num_objects=1)
    result = evaluate_video(v, plain_caption(r).replace("small ", "").replace("large ", ""))
    assert result.checks["motion"] is None and result.passed


def test_noise_fails_and_bad_input():
    noise = np.random.default_rng(0).integers(0, 256, (17, 64, 64, 3), dtype=np.uint8)
    assert not evaluate_video(noise, "a red circle moving right on a black background").passed
    with pytest.raises(ValueError, match="uint8"):
        evaluate_video(noise.astype(np.float32), "a red circle moving right")
