"""Task masks: the shared mask logic, the training-time task sampler, canvases and window plans."""

import random
from collections import Counter

import numpy as np
import pytest
import torch

from patchflow.pipelines.tasks import (
    TASKS, context_frames, covered_pixels, fill_unknown, frame_mask, image_frames, latent_frame_mask,
    latent_support, loop_plan, place_conditions, plan_windows, sample_task,
)


# ---------------------------------------------------------------- the shared mask logic
def test_frame_mask_head_and_tail():
    assert frame_mask(5, 2, 1).tolist() == [True, True, False, False, True]
    assert frame_mask(3).tolist() == [False] * 3
    assert frame_mask(3, 3, 0).all()
    with pytest.raises(ValueError, match="head \\+ tail"):
        frame_mask(3, 2, 2)


def test_latent_frames_follow_the_causal_grouping():
    # ft = 4: latent 0 <- pixel 0, latent 1 <- pixels 1..4, latent 2 <- pixels 5..8
    assert list(latent_support(0, 4)) == [0] and list(latent_support(2, 4)) == [5, 6, 7, 8]
    assert latent_frame_mask(frame_mask(9, 5, 0), 4).tolist() == [True, True, False]
    assert latent_frame_mask(frame_mask(9, 4, 0), 4).tolist() == [True, False, False]  # latent 1 half given
    assert latent_frame_mask(frame_mask(9, 0, 4), 4).tolist() == [False, False, True]
    assert latent_frame_mask(frame_mask(9, 0, 5), 4).tolist() == [False, False, True]  # pixel 4 alone: no
    lat = torch.tensor([True, False, True])
    assert covered_pixels(lat, 4).tolist() == frame_mask(9, 1, 4).tolist()
    assert torch.equal(latent_frame_mask(covered_pixels(lat, 4), 4), lat)  # exact inverse on whole latents
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        latent_frame_mask(torch.zeros(8, dtype=torch.bool), 4)


# ---------------------------------------------------------------- training sampler
def _check_mask(name, mask):
    t = mask.shape[0]
    given = mask.nonzero().squeeze(1).tolist()
    if name == "text_to_video":
        assert given == []
    elif name == "image_to_video":
        assert given == [0]
    elif name == "extend_forward":
        assert 1 <= len(given) < t and given == list(range(len(given)))
    elif name == "extend_backward":
        assert 1 <= len(given) < t and given == list(range(t - len(given), t))
    else:  # connect: a head and a tail, at least one frame generated between them
        assert mask[0] and mask[-1] and not mask.all()
        first_gen = int((~mask).nonzero()[0])
        last_gen = int((~mask).nonzero()[-1])
        assert (~mask[first_gen:last_gen + 1]).all()  # one generated gap in the middle


def test_sample_task_masks_are_valid_for_every_task_and_length():
    rng = random.Random(0)
    rates = {name: 1.0 for name in TASKS}
    seen = Counter()
    for t in (2, 3, 5, 9):
        for _ in range(300):
            name, mask = sample_task(t, rates, rng)
            assert mask.dtype == torch.bool and mask.shape == (t,)
            _check_mask(name, mask)
            seen[(t, name)] += 1
    assert all(seen[(5, name)] > 0 for name in TASKS)
    assert seen[(2, "connect")] == 0  # 2 latent frames cannot hold a head, a tail and a generated frame


def test_sample_task_one_frame_is_text_to_video_and_rates_are_normalised():
    rng = random.Random(1)
    assert sample_task(1, {"connect": 1.0}, rng)[0] == "text_to_video"
    assert not sample_task(1, {"connect": 1.0}, rng)[1].any()
    counts = Counter(sample_task(5, {"text_to_video": 3.0, "connect": 1.0, "extend_forward": 0.0}, rng)[0]
                     for _ in range(4000))
    assert counts["extend_forward"] == 0 and set(counts) == {"text_to_video", "connect"}
    assert abs(counts["text_to_video"] / 4000 - 0.75) < 0.03  # 3 : 1, whatever the scale of the rates
    same = [sample_task(5, {n: 1.0 for n in TASKS}, random.Random(7)) for _ in range(2)]
    assert same[0][0] == same[1][0] and torch.equal(same[0][1], same[1][1])  # the rng alone decides


def test_sample_task_errors_and_temporal_patches():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="unknown task names \\['inpaint'\\]"):
        sample_task(5, {"inpaint": 1.0}, rng)
    with pytest.raises(ValueError, match=">= 0"):
        sample_task(5, {"connect": -1.0}, rng)
    for _ in range(50):  # with pt = 2 every given span is whole temporal patches
        name, mask = sample_task(6, {n: 1.0 for n in TASKS}, rng, temporal_patch=2)
        pairs = mask.view(3, 2)
        assert torch.equal(pairs.any(1), pairs.all(1)), (name, mask)


def test_inference_canvas_uses_the_training_masks():
    # an extend-forward clip of 1 + 4k pixel frames gives exactly training's "first k + 1 latent frames"
    canvas, given = place_conditions(1, 17, 8, 8, 4, video=[np.ones((9, 8, 8, 3), np.uint8)], extend="forward")
    assert torch.equal(latent_frame_mask(given, 4), frame_mask(5, 3, 0))
    _, given = place_conditions(1, 17, 8, 8, 4, video=[np.ones((5, 8, 8, 3), np.uint8)],
                                end_video=[np.ones((8, 8, 8, 3), np.uint8)])
    assert torch.equal(latent_frame_mask(given, 4), frame_mask(5, 2, 2))  # connect
    _, given = place_conditions(1, 17, 8, 8, 4, video=[np.ones((4, 8, 8, 3), np.uint8)], extend="backward")
    assert torch.equal(latent_frame_mask(given, 4), frame_mask(5, 0, 1))


# ---------------------------------------------------------------- canvases
def test_image_frames_hold_the_whole_latent_group():
    assert list(image_frames(0, 4)) == [0]
    assert list(image_frames(1, 4)) == [1, 2, 3, 4] and list(image_frames(4, 4)) == [1, 2, 3, 4]
    assert list(image_frames(5, 4)) == [5, 6, 7, 8]
    img = np.full((4, 4, 3), 200, np.uint8)
    canvas, given = place_conditions(2, 9, 4, 4, 4, image=[img, img], image_frame=6)
    assert canvas.shape == (2, 9, 4, 4, 3) and given.tolist() == [False] * 5 + [True] * 4
    assert (canvas[:, 5:] == 200).all() and (canvas[:, :5] == 0).all()


def test_fill_unknown_copies_the_nearest_known_frame():
    frames = np.arange(5, dtype=np.uint8)[None, :, None, None, None].repeat(3, -1)  # (1, 5, 1, 1, 3)
    filled = fill_unknown(frames, torch.tensor([False, True, False, False, True]))
    assert filled[0, :, 0, 0, 0].tolist() == [1, 1, 1, 4, 4]  # ties go to the earlier frame
    assert fill_unknown(frames, torch.zeros(5, dtype=torch.bool)) is frames


# ---------------------------------------------------------------- windows and loops
@pytest.mark.parametrize("total", [17, 25, 33, 49, 101])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_plan_windows_cover_everything_with_valid_windows(total, direction):
    window, ft = 17, 4
    overlap = context_frames(window, ft, direction)
    spans = plan_windows(total, window, overlap, direction)
    covered = np.zeros(total, bool)
    for i, (a, b) in enumerate(spans):
        assert b - a == min(window, total) and (b - a - 1) % ft == 0  # every window is a valid clip
        if i:
            prev = spans[i - 1]
            shared = min(b, prev[1]) - max(a, prev[0])
            assert shared >= overlap  # enough context from the window before
            assert a > prev[0] if direction == "forward" else b < prev[1]
        covered[a:b] = True
    assert covered.all()
    assert (spans[-1][1] == total) if direction == "forward" else (spans[-1][0] == 0)


def test_context_is_whole_latent_frames():
    assert context_frames(17, 4, "forward") == 9  # latent frame 0 + 2: 1 + 2*4 pixel frames
    assert context_frames(17, 4, "backward") == 8  # the last 2 latent frames
    assert context_frames(5, 4, "forward") == 1 and context_frames(5, 4, "backward") == 4
    with pytest.raises(ValueError, match="one latent frame"):
        context_frames(1, 4, "forward")
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(40, 17, 17)


def test_loop_plan():
    for total, window in ((17, 17), (9, 17), (5, 17), (49, 17), (33, 9)):
        c, g, e = loop_plan(total, window, 4)
        assert (c + g + e - 1) % 4 == 0 and c + g + e <= window  # one valid window
        assert c >= 1 and g % 4 == 0 and g >= 4 and e == 4 and c + g <= total
        assert (c - 1) % 4 == 0  # the context starts the window: whole latent frames
    with pytest.raises(ValueError, match="loop=True needs"):
        loop_plan(1, 17, 4)
