"""Agglomeration (waterz), boundary affinities and the seeded-watershed baseline."""

from __future__ import annotations

import numpy as np
import pytest

from melecole.evaluate import evaluate_segmentation
from melecole.segment.agglomerate import agglomerate, boundary_affinities
from melecole.segment.watershed import boundary_watershed
from tests.conftest import blocks_volume


def _perfect_boundary(labels: np.ndarray) -> np.ndarray:
    from melecole.data.targets import boundary_map

    return boundary_map(labels)


def test_boundary_affinities_by_hand():
    boundary = np.zeros((2, 2, 3), np.float32)
    boundary[1, 0, 2] = 0.8
    boundary[0, 1, 0] = 0.3
    affinities = boundary_affinities(boundary)
    assert affinities.shape == (3, 2, 2, 3)
    # channel 0 pairs (z, y, x) with (z - 1, y, x); z = 0 has no partner.
    np.testing.assert_allclose(affinities[0, 0], 0)
    np.testing.assert_allclose(affinities[0, 1], [[1, 1, 0.2], [0.7, 1, 1]])
    # channel 2 pairs (z, y, x) with (z, y, x - 1).
    np.testing.assert_allclose(affinities[2, 1, 0], [0, 1, 0.2])
    np.testing.assert_allclose(affinities[1, 0, 1], [0.7, 1, 1])
    assert boundary[1, 0, 2] == np.float32(0.8)  # input untouched


def test_agglomeration_recovers_blocks_and_merges_more_at_higher_thresholds():
    _, labels = blocks_volume(shape=(16, 16, 16), block=8)
    affinities = boundary_affinities(_perfect_boundary(labels) * 0.9)
    low, mid, high = agglomerate(affinities, [0.05, 0.5, 0.99])
    assert evaluate_segmentation(mid, labels) == pytest.approx({"vi_split": 0, "vi_merge": 0, "arand": 0}, abs=1e-9)
    assert len(np.unique(high)) == 1
    assert len(np.unique(low)) >= len(np.unique(mid))
    assert low is not mid and not np.shares_memory(low, mid)


def test_agglomeration_output_is_quiet_and_rejects_bad_input(capfd):
    affinities = np.ones((3, 4, 4, 4), np.float32)
    agglomerate(affinities, [0.5])
    assert capfd.readouterr().out == ""
    with pytest.raises(ValueError, match="increasing"):
        agglomerate(affinities, [0.6, 0.5])
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 4\)"):
        agglomerate(affinities[:2], [0.5])


def test_seeded_watershed_baseline_recovers_blocks():
    _, labels = blocks_volume(shape=(16, 32, 32), block=8)
    segmentation = boundary_watershed(_perfect_boundary(labels), threshold=0.5, sigma_seeds=1.0, min_size=10)
    scores = evaluate_segmentation(segmentation, labels)
    assert scores["vi_split"] + scores["vi_merge"] < 0.3
    assert segmentation.min() >= 1 and segmentation.dtype == np.uint64
