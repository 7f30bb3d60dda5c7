"""The per-offset affinity map fitted on labelled pairs: counts, monotone fit, application, storage."""

from __future__ import annotations

import numpy as np
import pytest

from melecole.inference.encoding import decode
from melecole.segment.affinity_map import (apply_affinity_map, fit_affinity_map, map_as_text, map_from_text,
                                           pair_counts)

OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, 0, -2)]


def _labels(shape=(4, 6, 8), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 4, size=shape).astype(np.uint64)


def _same(labels, offset):
    from tests.test_segment_mutex import _perfect_affinities

    return _perfect_affinities(labels, [offset])[0].astype(bool)


def test_pairs_are_counted_per_offset_and_level_leaving_out_unlabelled_voxels_and_the_border():
    labels = _labels()
    labels[0, 0, :] = 0  # unlabelled row
    affinities = np.full((len(OFFSETS),) + labels.shape, 128, dtype=np.uint8)
    same, total = pair_counts([(affinities, labels)], OFFSETS)
    for channel, offset in enumerate(OFFSETS):
        partner = np.roll(labels, shift=[-d for d in offset], axis=(0, 1, 2))
        inside = np.ones(labels.shape, bool)
        for axis, d in enumerate(offset):
            if d:
                index = [slice(None)] * 3
                index[axis] = slice(0, -d) if d < 0 else slice(labels.shape[axis] - d, None)
                inside[tuple(index)] = False
        counted = inside & (labels != 0) & (partner != 0)
        assert total[channel, 128] == counted.sum() and total[channel].sum() == counted.sum()
        assert same[channel, 128] == (counted & (labels == partner)).sum()


def test_the_fit_recovers_the_probability_of_one_object_and_never_decreases():
    rng = np.random.default_rng(1)
    labels = _labels(shape=(10, 20, 20), seed=1)
    # Channel 0 is informative: level 200 for one object, 50 across; channel 3 is noise.
    affinities = np.zeros((len(OFFSETS),) + labels.shape, dtype=np.uint8)
    for channel, offset in enumerate(OFFSETS):
        same = _same(labels, offset)
        affinities[channel] = np.where(same, 200, 50) if channel < 3 else rng.integers(0, 256, size=labels.shape)
    table = fit_affinity_map([(affinities, labels)], OFFSETS)
    assert table.shape == (4, 256) and table.dtype == np.uint8
    assert np.all(np.diff(table.astype(int), axis=1) >= 0)  # isotonic
    assert table[0, 200] == 255 and table[0, 50] == 0  # the informative channel: certain
    share = _same(labels, OFFSETS[3]).mean()  # the noise channel: about the base rate of one object
    assert table[3, 128] / 255 == pytest.approx(share, abs=0.12)
    # Decoded float32 predictions give the same fit.
    np.testing.assert_array_equal(fit_affinity_map([(decode(affinities), labels)], OFFSETS), table)


def test_the_map_applies_per_offset_to_stored_predictions_and_survives_storage_as_text():
    table = np.stack([np.arange(256), 255 - np.arange(256), np.full(256, 7), np.arange(256) // 2]).astype(np.uint8)
    affinities = np.random.default_rng(2).integers(0, 256, size=(4, 3, 4, 5), dtype=np.uint8)
    mapped = apply_affinity_map(affinities, table)
    np.testing.assert_array_equal(mapped[0], affinities[0])
    np.testing.assert_array_equal(mapped[1], 255 - affinities[1])
    assert np.all(mapped[2] == 7)
    np.testing.assert_array_equal(apply_affinity_map(decode(affinities), table), decode(mapped))
    text = map_as_text(table)
    assert len(text) == 4 and all(len(row) == 512 for row in text)
    np.testing.assert_array_equal(map_from_text(text), table)
    with pytest.raises(ValueError, match="stored predictions"):
        apply_affinity_map(np.full((4, 2, 2, 2), 0.3337, np.float32), table)
    with pytest.raises(ValueError, match=r"need \(4, 256\)"):
        apply_affinity_map(affinities, table[:3])
    with pytest.raises(ValueError, match="levels"):
        map_from_text(["00ff"])
