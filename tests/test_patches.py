"""Spacetime patches and Patch n' Pack: round trips, packing, token dropping, errors."""

import pytest
import torch

from patchflow.models.patches import (
    first_fit_decreasing,
    grid_coords,
    pack,
    pad_batch,
    patchify,
    unpack,
    unpatchify,
)


@pytest.mark.parametrize("patch, shape", [((1, 2, 2), (4, 3, 6, 10)), ((2, 2, 2), (3, 4, 6, 2)),
                                          ((1, 1, 1), (2, 3, 5, 7)), ((1, 4, 4), (8, 1, 8, 12))])
def test_patchify_unpatchify_identity(patch, shape):
    latent = torch.randn(shape)
    tokens, coords = patchify(latent, patch)
    grid = (shape[1] // patch[0], shape[2] // patch[1], shape[3] // patch[2])
    assert tokens.shape == (grid[0] * grid[1] * grid[2], patch[0] * patch[1] * patch[2] * shape[0])
    assert torch.equal(unpatchify(tokens, grid, patch, shape[0]), latent)
    assert coords.dtype == torch.long and torch.equal(coords, grid_coords(grid))


def test_patchify_token_content_and_coords_odd_grid():
    latent = torch.randn(3, 3, 10, 14)  # patch grid 3 x 5 x 7
    tokens, coords = patchify(latent, (1, 2, 2))
    assert coords.shape == (105, 3) and coords.max(0).values.tolist() == [2, 4, 6]
    for i in (0, 17, 58, 104):
        t, h, w = coords[i].tolist()
        block = latent[:, t, 2 * h:2 * h + 2, 2 * w:2 * w + 2]  # [C, ph, pw]
        assert torch.equal(tokens[i], block.permute(1, 2, 0).reshape(-1))  # (ph pw c)


def test_patchify_size_errors():
    with pytest.raises(ValueError, match="latent height 9 is not divisible by patch height 2"):
        patchify(torch.zeros(4, 1, 9, 8), (1, 2, 2))
    with pytest.raises(ValueError, match=r"height must be a multiple of 16 .*got 72; nearest valid: 80"):
        patchify(torch.zeros(4, 1, 9, 8), (1, 2, 2), vae_scale=(4, 8))
    with pytest.raises(ValueError, match="latent frames 5 is not divisible by patch frames 2"):
        patchify(torch.zeros(4, 5, 8, 8), (2, 2, 2))
    with pytest.raises(ValueError, match=r"num_frames must be 5 \+ 8k \(5, 13, 21, .*got 17; nearest valid: 21"):
        patchify(torch.zeros(4, 5, 8, 8), (2, 2, 2), vae_scale=(4, 8))
    with pytest.raises(ValueError, match="patch must be 3 positive ints"):
        patchify(torch.zeros(4, 1, 8, 8), (0, 2, 2))
    with pytest.raises(ValueError, match=r"\[C, T, H, W\]"):
        patchify(torch.zeros(1, 4, 1, 8, 8), (1, 2, 2))


def test_first_fit_decreasing():
    assert first_fit_decreasing([5, 3, 8, 2], 10) == [[2, 3], [0, 1]]
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 50, (40,), generator=gen).tolist()
    rows = first_fit_decreasing(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(40))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) <= 11 / 9 * (sum(lengths) / 64) + 1  # FFD bound against the volume lower bound
    with pytest.raises(ValueError, match="sample 1 has 70 tokens, more than the token budget 64"):
        first_fit_decreasing([10, 70], 64)


def _latents():
    shapes = [(4, 3, 6, 4), (4, 1, 4, 4), (4, 5, 2, 8), (4, 2, 6, 6), (4, 1, 2, 2)]  # 18, 4, 20, 18, 1 tokens
    return [torch.randn(s) for s in shapes]


def test_pack_layout_and_unpack_roundtrip():
    latents = _latents()
    packed = pack(latents, (1, 2, 2), budget=24)
    r, s = packed.sample_ids.shape
    assert s == 24 and packed.tokens.shape == (r, 24, 16)
    assert packed.num_tokens == 61 and r == 3  # 61 tokens need at least 3 rows of 24
    for b, n in enumerate([18, 4, 20, 18, 1]):
        assert int((packed.sample_ids == b).sum()) == n
        row = packed.sample_ids[packed.sample_row[b]]
        start, length = int(packed.sample_start[b]), int(packed.sample_len[b])
        assert (row[start:start + length] == b).all()  # a sample is contiguous in one row
    assert (packed.tokens[packed.sample_ids < 0] == 0).all()
    assert torch.equal(packed.loss_mask, packed.sample_ids >= 0)
    for got, want in zip(unpack(packed, packed.tokens), latents):
        assert torch.equal(got, want)
    padded = pad_batch(latents, (1, 2, 2))
    assert padded.tokens.shape == (5, 20, 16)
    assert padded.padding_fraction == pytest.approx(1 - 61 / 100)
    for got, want in zip(padded.unpack(padded.tokens), latents):
        assert torch.equal(got, want)


def test_pack_default_budget_and_errors():
    latents = _latents()
    assert pack(latents, (1, 2, 2)).tokens.shape[1] == 20  # the longest sample
    with pytest.raises(ValueError, match="sample 2 has 20 tokens, more than the token budget 19"):
        pack(latents, (1, 2, 2), budget=19)
    with pytest.raises(ValueError, match="latent height 3 is not divisible by patch height 2"):
        pack([torch.zeros(4, 1, 3, 4)], (1, 2, 2))
    with pytest.raises(ValueError, match="same C"):
        pack([torch.zeros(4, 1, 4, 4), torch.zeros(3, 1, 4, 4)], (1, 2, 2))
    with pytest.raises(ValueError, match="drop_rates"):
        pack(latents, (1, 2, 2), drop_rates=1.0)
    with pytest.raises(ValueError, match="pad_to 10 is shorter"):
        pad_batch(latents, (1, 2, 2), pad_to=10)


def test_per_token():
    packed = pack(_latents(), (1, 2, 2), budget=24)
    values = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    spread = packed.per_token(values, fill=-1.0)
    assert spread.shape == packed.sample_ids.shape
    assert torch.equal(spread[packed.sample_ids < 0], torch.full_like(spread[packed.sample_ids < 0], -1.0))
    for b in range(5):
        assert (spread[packed.sample_ids == b] == values[b]).all()


def test_token_dropping_keeps_condition_tokens():
    latents = _latents()
    cond = [torch.tensor([True, False, False]), None, torch.tensor([True, True, False, False, False]),
            torch.tensor([False, False]), None]
    gen = torch.Generator().manual_seed(0)
    packed = pack(latents, (1, 2, 2), budget=24, cond_frames=cond, drop_rates=[0.5, 0.5, 0.25, 0.0, 0.9],
                  generator=gen)
    # tokens per sample: full, condition, generated-after-drop
    expect = {0: (18, 6, 12 - 6), 1: (4, 0, 4 - 2), 2: (20, 8, 12 - 3), 3: (18, 0, 18), 4: (1, 0, 1)}
    for b, (full, n_cond, n_gen) in expect.items():
        ids = packed.sample_ids == b
        assert int((ids & packed.cond_mask).sum()) == n_cond  # no condition token dropped
        assert int((ids & packed.loss_mask).sum()) == n_gen
        assert int(ids.sum()) == n_cond + n_gen
    assert not (packed.loss_mask & packed.cond_mask).any()
    assert not (packed.loss_mask & (packed.sample_ids < 0)).any()
    # condition tokens are exactly those on the condition frames
    assert (packed.coords[packed.cond_mask & (packed.sample_ids == 0)][:, 0] == 0).all()
    out, masks = unpack(packed, packed.tokens, return_mask=True)
    for b, (latent, got, mask) in enumerate(zip(latents, out, masks)):
        assert got.shape == latent.shape and mask.shape == packed.grids[b]
        assert int(mask.sum()) == int((packed.sample_ids == b).sum())
        present = mask.repeat_interleave(2, 1).repeat_interleave(2, 2)  # patch grid -> latent grid [T, H, W]
        assert torch.equal(got[:, present], latent[:, present])
        assert (got[:, ~present] == 0).all()  # dropped tokens come back as zeros


def test_condition_frames_must_cover_temporal_patches():
    with pytest.raises(ValueError, match="inside a temporal patch of 2 frames"):
        pack([torch.zeros(4, 4, 4, 4)], (2, 2, 2), cond_frames=[torch.tensor([True, False, False, False])])
    with pytest.raises(ValueError, match=r"cond_frames\[0\] must be bool \[T_latent=4\]"):
        pack([torch.zeros(4, 4, 4, 4)], (2, 2, 2), cond_frames=[torch.tensor([True, False])])
    packed = pack([torch.zeros(4, 4, 4, 4)], (2, 2, 2), cond_frames=[torch.tensor([True, True, False, False])])
    assert int(packed.cond_mask.sum()) == 4  # one temporal patch of a 2 x 2 x 2 grid
