"""Two correlated views: the correspondence is exact, the views differ, seeds repeat."""

from __future__ import annotations

import numpy as np
import pytest

from melecole.data.augment import AugmentConfig, build_augmenter, isolate, read_shape
from melecole.data.views import two_views, views_read_shape


def _coded(shape):
    labels = np.arange(1, np.prod(shape) + 1, dtype=np.uint64).reshape(shape)  # every voxel its own id
    return labels.astype(np.float32), labels


def test_corresponding_voxels_are_the_same_voxels():
    raw, labels = _coded(views_read_shape((8, 10, 12), (3, 4, 5)))
    rng = np.random.default_rng(0)
    offsets, flipped = set(), False
    for _ in range(30):
        pair = two_views(raw, labels, rng, (8, 10, 12), (3, 4, 5))
        a, b = (pair.shared(v, pair.labels[v]) for v in (0, 1))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(pair.shared(0, pair.raw[0]), pair.shared(1, pair.raw[1]))
        # Unique ids: the shared voxels are exactly the two crops' intersection.
        expected = np.intersect1d(pair.labels[0], pair.labels[1])
        assert a.size == expected.size == np.prod([p - abs(d) for p, d in zip((8, 10, 12), pair.offset)])
        assert all(abs(d) <= m for d, m in zip(pair.offset, (3, 4, 5)))
        offsets.add(pair.offset)
        flipped |= not np.array_equal(np.sort(pair.labels[0], axis=2), pair.labels[0])
        for view in range(2):
            assert pair.raw[view].shape == pair.labels[view].shape == (8, 10, 12)
            assert pair.raw[view].dtype == np.float32 and pair.labels[view].dtype == np.uint64
    assert len(offsets) > 20 and flipped


def test_views_get_their_own_intensity_augmentation_and_repeat_under_a_seed():
    config = isolate(AugmentConfig(), "grayscale")
    augmenter = build_augmenter(config, (8, 8, 8))
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((12, 12, 12)).astype(np.float32)
    labels = rng.integers(1, 6, (12, 12, 12)).astype(np.uint64)
    pair = two_views(raw, labels, np.random.default_rng(1), (8, 8, 8), (4, 4, 4), intensity=augmenter.intensity)
    again = two_views(raw, labels, np.random.default_rng(1), (8, 8, 8), (4, 4, 4), intensity=augmenter.intensity)
    for view in range(2):
        np.testing.assert_array_equal(pair.raw[view], again.raw[view])
    np.testing.assert_array_equal(pair.shared(0, pair.labels[0]), pair.shared(1, pair.labels[1]))
    assert not np.allclose(pair.shared(0, pair.raw[0]), pair.shared(1, pair.raw[1]))
    # A leading channel axis is carried along.
    stacked = np.stack([pair.raw[0], pair.raw[0]])
    assert pair.shared(0, stacked).shape[1:] == pair.shared(0, pair.raw[0]).shape


def test_views_after_a_shared_geometric_augmentation():
    # The region is warped once (both views share it), then cut into two views.
    config = AugmentConfig()
    patch, max_offset = (12, 12, 12), (4, 4, 4)
    region = views_read_shape(patch, max_offset)
    augmenter = build_augmenter(config, region)
    raw, labels = _coded(read_shape(config, region))
    rng = np.random.default_rng(3)
    warped_raw, warped_labels = augmenter.geometry(raw, labels, rng, region)
    pair = two_views(warped_raw, warped_labels, rng, patch, max_offset, intensity=augmenter.intensity)
    np.testing.assert_array_equal(pair.shared(0, pair.labels[0]), pair.shared(1, pair.labels[1]))
    assert np.isin(pair.labels[1], labels).all()


def test_bad_regions_and_offsets_are_errors():
    raw, labels = _coded((10, 10, 10))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"region \(10, 10, 10\) is smaller"):
        two_views(raw, labels, rng, (8, 8, 8), (3, 3, 3))
    with pytest.raises(ValueError, match="below the patch"):
        two_views(raw, labels, rng, (4, 4, 4), (4, 4, 4))
    with pytest.raises(ValueError, match=r"\(10, 10, 9\)"):
        two_views(raw, labels[:, :, :9], rng, (4, 4, 4), (1, 1, 1))
