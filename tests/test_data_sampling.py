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
        np.testing.assert_array_equal(a[0], b[0])
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


# --- augmentation hook and the validation grid ---------------------------------------------------

from melecole.data.augment import AugmentConfig, build_augmenter, read_shape  # noqa: E402
from melecole.data.sampling import grid_patches  # noqa: E402


def test_sampler_reads_the_enlarged_region_and_the_augmenter_crops_it():
    raw, labels = _coded_volume((20, 40, 40))
    seen = []

    def centre_crop(raw_region, label_region, rng):
        seen.append(label_region.shape)
        box = tuple(slice((n - 8) // 2, (n - 8) // 2 + 8) for n in label_region.shape)
        return raw_region[box], label_region[box]

    sampler = PatchSampler([(raw, labels)], (8, 8, 8), np.random.default_rng(0), permute="none", flip=False,
                           augment=centre_crop, read=(20, 30, 30))
    raw_patch, label_patch = sampler.sample()
    assert seen == [(20, 30, 30)]
    assert label_patch.shape == (8, 8, 8) and label_patch.flags.c_contiguous
    np.testing.assert_array_equal(raw_patch.astype(np.uint64), label_patch)
    # The region's central patch is contiguous in the volume: a crop, not a resampling.
    z0, y0, x0 = np.argwhere(labels == label_patch[0, 0, 0])[0]
    np.testing.assert_array_equal(label_patch, labels[z0:z0 + 8, y0:y0 + 8, x0:x0 + 8])


def test_read_region_is_cut_down_to_small_volumes_but_never_below_the_patch():
    small = _coded_volume((10, 40, 40))
    large = _coded_volume((30, 40, 40))
    shapes = set()

    def record(raw_region, label_region, rng):
        shapes.add(label_region.shape)
        return raw_region[:8, :8, :8], label_region[:8, :8, :8]

    sampler = PatchSampler([small, large], (8, 8, 8), np.random.default_rng(0), permute="all",
                           augment=record, read=(24, 24, 24))
    for _ in range(40):
        sampler.sample()
    assert (24, 24, 24) in shapes
    assert {(10, 24, 24), (24, 10, 24), (24, 24, 10)} <= shapes  # the small volume along each axis order
    with pytest.raises(ValueError, match="no augment"):
        PatchSampler([large], (8, 8, 8), np.random.default_rng(0), read=(12, 12, 12))
    with pytest.raises(ValueError, match=r"at least the patch"):
        PatchSampler([large], (8, 8, 8), np.random.default_rng(0), augment=record, read=(4, 12, 12))


def test_rejection_is_decided_before_augmenting():
    labels = np.zeros((10, 40, 40), np.uint64)
    labels[:, :, 20:] = 5
    raw = np.zeros(labels.shape, np.float32)
    calls = []
    config = AugmentConfig(anisotropic=True)

    def augment(raw_region, label_region, rng):
        calls.append(1)
        return build_augmenter(config, (4, 10, 10))(raw_region, label_region, rng)

    sampler = PatchSampler([(raw, labels)], (4, 10, 10), np.random.default_rng(0), permute="none", flip=False,
                           min_labelled=0.9, max_tries=50, augment=augment,
                           read=tuple(min(r, s) for r, s in zip(read_shape(config, (4, 10, 10)), labels.shape)))
    for _ in range(10):
        sampler.sample()
    assert len(calls) == 10  # once per patch, whatever the number of redraws


def test_sampler_with_the_default_augmenter_is_deterministic():
    raw, labels = _coded_volume((24, 40, 40))
    config = AugmentConfig()

    def patches(seed):
        sampler = PatchSampler([(raw, labels)], (12, 12, 12), np.random.default_rng(seed), permute="none",
                               flip=False, augment=build_augmenter(config, (12, 12, 12)),
                               read=read_shape(config, (12, 12, 12)))
        return [sampler.sample() for _ in range(4)]

    first, second, other = patches(3), patches(3), patches(4)
    for (ra, la), (rb, lb) in zip(first, second):
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(la, lb)
        assert ra.shape == (12, 12, 12) and ra.dtype == np.float32 and np.isin(la, labels).all()
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))


def test_grid_patches_cover_every_voxel_with_the_given_overlap():
    boxes = grid_patches((10, 21, 16), (4, 8, 16), (1, 2, 0))
    assert all(tuple(s.stop - s.start for s in box) == (4, 8, 16) for box in boxes)
    assert sorted({box[0].start for box in boxes}) == [0, 3, 6]
    assert sorted({box[1].start for box in boxes}) == [0, 6, 12, 13]
    assert {box[2].start for box in boxes} == {0}
    covered = np.zeros((10, 21, 16), int)
    for box in boxes:
        covered[box] += 1
    assert covered.min() == 1
    assert grid_patches((10, 21, 16), (4, 8, 16), (1, 2, 0)) == boxes  # fixed, not random
    with pytest.raises(MelecoleError, match=r"patch \(4, 8, 17\) does not fit in the volume \(10, 21, 16\)"):
        grid_patches((10, 21, 16), (4, 8, 17))
    with pytest.raises(MelecoleError, match="overlap"):
        grid_patches((10, 21, 16), (4, 8, 8), (4, 0, 0))


_GEOMETRY_ONLY = {name: {"p": 0.0} for name in ("grayscale", "motion_blur", "cut_blur", "cut_noise", "missing_parts",
                                                  "missing_section")}


@pytest.mark.parametrize("resampling", [False, True], ids=["exact-transforms", "with-rescale-and-elastic"])
def test_augmented_raw_is_read_where_its_labels_are(resampling):
    # Raw is a known function of position: the volume's coordinate along one axis, one sampler
    # per axis, all drawing alike; labels are one id per voxel. Every geometric augmentation is
    # on (intensity ones off), and the sampler's own axis orders and flips too.
    shape, patch = (40, 44, 44), (12, 12, 12)
    labels = np.arange(1, np.prod(shape) + 1, dtype=np.uint64).reshape(shape)
    geometry = {"flip_transpose": {"p": 1.0}, "rotate90": {"p": 1.0}, "misalignment": {"p": 1.0},
                "rescale": {"p": 1.0 if resampling else 0.0}, "elastic": {"p": 1.0 if resampling else 0.0}}
    config = AugmentConfig(**geometry, **_GEOMETRY_ONLY)
    samplers = [PatchSampler([(coordinate.astype(np.float32), labels)], patch, np.random.default_rng(5), permute="all",
                             augment=build_augmenter(config, patch), read=read_shape(config, patch))
                for coordinate in np.indices(shape)]
    fractional = 0.0
    for _ in range(12):
        (raw_z, labels_z), (raw_y, labels_y), (raw_x, labels_x) = (sampler.sample() for sampler in samplers)
        np.testing.assert_array_equal(labels_z, labels_y)
        np.testing.assert_array_equal(labels_z, labels_x)
        # Where in the volume each voxel's label comes from, and where its raw was read.
        label_position = np.stack(np.unravel_index((labels_z - 1).astype(np.intp), shape))  # (3, z, y, x)
        raw_position = np.stack([raw_z, raw_y, raw_x]).astype(np.float64)
        deviation = np.abs(raw_position - label_position)
        if resampling:
            # Raw is interpolated linearly (exact for a linear function), labels take the nearest voxel.
            assert deviation.max() <= 0.5 + 1e-4
            fractional = max(fractional, float(np.abs(raw_position - np.rint(raw_position)).max()))
        else:
            assert deviation.max() == 0  # orientation and misalignment move whole voxels
    if resampling:
        assert fractional > 0.25  # the patches were resampled, not only cropped
