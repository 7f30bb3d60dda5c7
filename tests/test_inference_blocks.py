"""Prediction of regions on the volume's global tile grid: any partition into blocks gives the
whole-volume result to the last bit; affinities are computed per tile and never from pairs a tile
does not hold; the generic blender keeps its contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melecole.blockwise.geometry import automatic_block, block_regions
from melecole.inference.blend import RegionBlender
from melecole.inference.region import TilePredictor, predict_region, read_padded, volume_pairs
from melecole.inference.tiling import TileGrid, full_region
from melecole.models.registry import build_model

OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-3, 0, 0), (0, -3, 0), (0, 0, -3)]


def _model(head: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("unet3d", in_channels=1, base_channels=4, channel_factor=2, downsample=[(2, 2, 2)],
                        kernel=None, embedding_dim=4, norm="group", learnable_scale=False,
                        affinity_channels=len(OFFSETS) if head else 0)
    return model.eval()


def _raw(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("augment", ["none", "flips"])
def test_blocks_reproduce_the_whole_volume_exactly(augment):
    raw = _raw((13, 21, 18))
    grid = TileGrid.of(raw.shape, (8, 8, 8), (2, 3, 2))
    predictor = TilePredictor(_model(), grid.patch, OFFSETS, 1.5, "l2", augment, keep_embedding=True)
    read = lambda region: raw[region]  # noqa: E731
    whole = predict_region(predictor, read, grid)
    assert set(whole) == {"boundary", "affinities", "predicted_affinities", "embedding"}
    for block in [(5, 7, 9), (13, 4, 18), (1, 21, 5)]:
        for region in block_regions(raw.shape, block):
            part = predict_region(predictor, read, grid, region)
            for key, values in whole.items():
                inside = values[(slice(None),) * (values.ndim - 3) + region]
                np.testing.assert_array_equal(part[key], inside, err_msg=f"{key} of block {block} at {region}")


def test_a_volume_smaller_than_the_patch_is_padded_like_the_whole_volume():
    raw = _raw((3, 20, 5), seed=1)
    grid = TileGrid.of(raw.shape, (8, 8, 8), 2)
    predictor = TilePredictor(_model(head=False), grid.patch, OFFSETS, 1.5, "l2")
    whole = predict_region(predictor, lambda r: raw[r], grid)
    part = predict_region(predictor, lambda r: raw[r], grid, (slice(1, 3), slice(6, 15), slice(0, 5)))
    np.testing.assert_array_equal(part["boundary"], whole["boundary"][1:3, 6:15, 0:5])
    box = (slice(0, 8), slice(0, 8), slice(0, 8))
    padded = read_padded(lambda r: raw[r], raw.shape, box)
    np.testing.assert_array_equal(padded, np.pad(raw, [(0, 5), (0, 0), (0, 3)], mode="reflect")[box])


def test_pairs_leaving_the_volume_get_zero_and_the_rest_are_affinities():
    raw = _raw((10, 12, 11), seed=2)
    grid = TileGrid.of(raw.shape, (8, 8, 8), 2)
    predictor = TilePredictor(_model(head=False), grid.patch, OFFSETS, 1.5, "l2")
    affinities = predict_region(predictor, lambda r: raw[r], grid)["affinities"]
    inside = volume_pairs(raw.shape, OFFSETS, full_region(raw.shape))
    assert affinities.shape == (len(OFFSETS),) + raw.shape
    assert np.all(affinities[inside == 0] == 0)
    assert affinities[3, :3].max() == 0 and affinities[3, 3:].min() >= 0
    assert (affinities[inside == 1] > 0).mean() > 0.5  # a random network gives many positive affinities
    assert affinities.max() <= 1.0


class _Constant(torch.nn.Module):
    """Embedding = the tile's own start, so two tiles' embeddings never agree: per-tile affinities
    are 1 (same tile) wherever a tile holds both voxels, and only then."""

    divisor = (1, 1, 1)

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        tag = x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x) * 100.0
        return {"embedding": torch.cat([tag, tag], 1), "boundary": torch.zeros_like(x)}


def test_affinities_come_from_one_tile_never_from_two():
    raw = _raw((6, 14, 6), seed=3)
    grid = TileGrid.of(raw.shape, (6, 8, 6), (0, 2, 0))
    predictor = TilePredictor(_Constant(), grid.patch, [(0, -1, 0), (0, -2, 0)], 1.5, "l2")
    affinities = predict_region(predictor, lambda r: raw[r], grid)["affinities"]
    # Embeddings of different tiles differ by ~100, so an affinity from blended embeddings would
    # be 0 across the overlap; per tile, every pair a tile holds is the same tile: affinity 1.
    np.testing.assert_allclose(affinities[0, :, 1:], 1.0, atol=1e-6)
    np.testing.assert_allclose(affinities[1, :, 2:], 1.0, atol=1e-6)
    assert np.all(affinities[:, :, 0] == 0)
    # An offset longer than the overlap has pairs no tile holds: they get no vote, so 0.
    longer = TilePredictor(_Constant(), grid.patch, [(0, -3, 0)], 1.5, "l2")
    seam = predict_region(longer, lambda r: raw[r], grid)["affinities"][0]
    np.testing.assert_array_equal(seam[:, 8], 0.0)
    np.testing.assert_allclose(seam[:, 3:8], 1.0, atol=1e-6)


def test_blender_weights_only_valid_votes_and_divides_by_them():
    blender = RegionBlender(full_region((2, 2, 3)), (2, 2, 2))
    ones = np.ones((1, 2, 2, 2), dtype=np.float32)
    valid = np.ones((1, 2, 2, 2), dtype=np.float32)
    valid[..., 1] = 0  # the first tile does not vote for its last x column
    blender.add((0, 0, 0), {"v": (ones * 2, valid)})
    blender.add((0, 0, 1), {"v": (ones * 4, None)})
    out = blender.result()["v"][0]
    np.testing.assert_allclose(out[..., 0], 2.0)
    np.testing.assert_allclose(out[..., 1], 4.0)  # only the second tile voted here
    np.testing.assert_allclose(out[..., 2], 4.0)


def test_automatic_blocks_fit_the_budget_and_the_chunks():
    shape, chunks = (100, 1024, 1024), (64, 64, 64)
    block = automatic_block(shape, chunks, bytes_per_voxel=300, budget_bytes=2 * 2**30)
    assert all(b % c == 0 for b, c in zip(block, chunks))
    assert np.prod([min(b, s) for b, s in zip(block, shape)]) * 300 <= 2 * 2**30
    assert automatic_block((50, 60, 70), chunks, 300, 2 * 2**30) == (64, 64, 128)
    regions = block_regions(shape, block)
    covered = sum(np.prod([r.stop - r.start for r in region]) for region in regions)
    assert covered == np.prod(shape)


def test_separable_validity_gives_the_weights_accumulating_them_would():
    rng = np.random.default_rng(4)
    patch, region = (4, 5, 6), (slice(1, 9), slice(0, 12), slice(2, 11))
    masks = tuple((rng.random((2, p)) > 0.3).astype(np.float32) for p in patch)
    full = masks[0][:, :, None, None] * masks[1][:, None, :, None] * masks[2][:, None, None, :]
    analytic, accumulated = RegionBlender(region, patch), RegionBlender(region, patch)
    for start in TileGrid.of((10, 12, 13), patch, (1, 2, 3)).starts(region):
        values = rng.random((2,) + patch).astype(np.float32)
        analytic.add(start, {"v": (values, masks)})
        accumulated.add(start, {"v": (values, full)})
    np.testing.assert_allclose(analytic.result()["v"], accumulated.result()["v"], rtol=1e-5, atol=1e-6)


def test_tiles_that_do_not_form_a_grid_are_refused():
    blender = RegionBlender(full_region((4, 4, 8)), (4, 4, 4))
    blender.add((0, 0, 0), {"v": (np.ones((1, 4, 4, 4), dtype=np.float32), None)})
    blender.add((0, 0, 4), {"v": (np.ones((1, 4, 4, 4), dtype=np.float32), None)})
    np.testing.assert_allclose(blender.result()["v"], 1.0)
    holes = RegionBlender(full_region((8, 4, 8)), (4, 4, 4))
    for start in [(0, 0, 0), (4, 0, 4)]:
        holes.add(start, {"v": (np.ones((1, 4, 4, 4), dtype=np.float32), None)})
    with pytest.raises(ValueError, match="do not form a grid"):
        holes.result()


def test_the_cheapest_block_fits_the_budget_and_runs_no_more_tiles_than_other_blocks():
    from melecole.inference.tiling import cheapest_block, tile_runs

    grid = TileGrid.of((100, 1024, 1024), (48, 48, 48), (12, 12, 12))
    chunks, per_voxel, budget = (64, 64, 64), 174, 2 * 2**30
    block = cheapest_block(grid, chunks, per_voxel, budget)
    assert all(b % c == 0 for b, c in zip(block, chunks))
    assert np.prod([min(b, s) for b, s in zip(block, grid.shape)]) * per_voxel <= budget

    def runs(candidate):
        return np.prod([tile_runs(s, p, o, b) for s, p, o, b in zip(grid.shape, grid.patch, grid.overlap, candidate)])

    whole = runs(grid.shape)
    assert whole == len(grid.starts())
    for other in [(64, 256, 256), (128, 128, 512), (128, 192, 320), (64, 512, 256)]:
        if np.prod([min(b, s) for b, s in zip(other, grid.shape)]) * per_voxel <= budget:
            assert runs(block) <= runs(other)
    assert cheapest_block(TileGrid.of((50, 250, 250), 48, 12), chunks, per_voxel, budget) == (64, 256, 256)
