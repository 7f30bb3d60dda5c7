"""Patch sampling: shapes, joint transforms of raw and labels, determinism, rejection, weighting."""

from __future__ import annotations

import numpy as np
import pytest

from melecole.data.sampling import PatchSampler
from melecole.errors import MelecoleError


def _coded_volume(shape):
    # raw encodes each voxel's label, so any mismatch between raw and label transforms shows.
    labels = np.arange(1, np.prod(shape) + 1, dtype=np.uint64).reshape(shape)
    return labels.astype(np.float32), labels


def test_patches_have_the_shape_and_raw_matches_labels():
    raw, labels = _coded_volume((20, 30, 40))
    sampler = PatchSampler([(raw, labels)], (8, 12, 16), np.random.default_rng(0), permute="all")
    for _ in range(30):
        raw_patch, label_patch = sampler.sample()
        assert raw_patch.shape == label_patch.shape == (8, 12, 16)
        np.testing.assert_array_equal(raw_patch.astype(np.uint64), label_patch)
        assert np.isin(label_patch, labels).all()


def test_all_axis_orders_are_drawn_and_xy_keeps_z():
    raw, labels = _coded_volume((24, 24, 24))
    z_step = 24 * 24  # neighbouring voxels along the volume's z differ by this much

    def patch_z_steps(permute):
        sampler = PatchSampler([(raw, labels)], (6, 6, 6), np.random.default_rng(1), permute=permute)
        steps = set()
        for _ in range(60):
            _, patch = sampler.sample()
            steps.add(abs(int(patch[1, 0, 0]) - int(patch[0, 0, 0])))
        return steps

    assert patch_z_steps("all") == {1, 24, z_step}
    assert patch_z_steps("xy") == {z_step}
    assert patch_z_steps("none") == {z_step}


def test_same_seed_same_patches():
    raw, labels = _coded_volume((10, 20, 20))
    first = PatchSampler([(raw, labels)], (4, 8, 8), np.random.default_rng(7))
    second = PatchSampler([(raw, labels)], (4, 8, 8), np.random.default_rng(7))
    for _ in range(5):
        a, b = first.sample(), second.sample()
        np.testing.assert_array_equal(a[1], b[1])


def test_mostly_unlabelled_patches_are_redrawn():
    raw = np.zeros((10, 40, 40), np.float32)
    labels = np.zeros((10, 40, 40), np.uint64)
    labels[:, :, 20:] = 5  # half the volume labelled
    sampler = PatchSampler([(raw, labels)], (4, 10, 10), np.random.default_rng(0), permute="none",
                           flip=False, min_labelled=0.9, max_tries=50)
    fractions = [np.count_nonzero(sampler.sample()[1]) / 400 for _ in range(20)]
    assert min(fractions) >= 0.9


def test_volumes_are_drawn_in_proportion_to_size():
    small = (np.zeros((8, 8, 8), np.float32), np.full((8, 8, 8), 1, np.uint64))
    large = (np.zeros((8, 8, 24), np.float32), np.full((8, 8, 24), 2, np.uint64))
    sampler = PatchSampler([small, large], (4, 4, 4), np.random.default_rng(0), permute="none")
    draws = [int(sampler.sample()[1][0, 0, 0]) for _ in range(800)]
    assert abs(draws.count(2) / len(draws) - 0.75) < 0.05


def test_patch_larger_than_every_volume_is_an_error():
    volume = (np.zeros((4, 8, 8), np.float32), np.ones((4, 8, 8), np.uint64))
    with pytest.raises(MelecoleError, match=r"patch \(8, 8, 8\) does not fit.*\(4, 8, 8\)"):
        PatchSampler([volume], (8, 8, 8), np.random.default_rng(0))


def test_orientations_that_do_not_fit_are_skipped():
    raw, labels = _coded_volume((6, 20, 20))
    sampler = PatchSampler([(raw, labels)], (4, 16, 16), np.random.default_rng(0), permute="all")
    for _ in range(20):
        assert sampler.sample()[1].shape == (4, 16, 16)
