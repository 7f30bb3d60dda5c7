"""Seeds from a boundary map: one per connected interior core."""

from __future__ import annotations

import numpy as np
import pytest

from melecole.segment.seeds import boundary_seeds


def test_each_region_between_boundaries_gets_one_core_seed():
    boundary = np.zeros((12, 12, 24), dtype=np.float32)
    boundary[:, :, 11:13] = 1.0  # a wall splits the block into two halves
    seeds = boundary_seeds(boundary, threshold=0.5, min_distance=3.0)
    assert seeds.dtype == np.uint64
    assert set(np.unique(seeds)) == {0, 1, 2}
    assert len(np.unique(seeds[:, :, :11])) == 2 and len(np.unique(seeds[:, :, 13:])) == 2  # 0 and one id each
    assert seeds[:, :, 11:13].max() == 0
    # Cores stay min_distance away from the wall (distance 3 from x = 11 means x <= 8).
    assert seeds[6, 6, 9] == 0 and seeds[6, 6, 8] != 0


def test_a_thin_contact_carries_no_seed_so_two_cores_stay_apart():
    boundary = np.ones((9, 20, 20), dtype=np.float32)
    boundary[1:8, 1:8, 1:8] = 0  # two cubes ...
    boundary[1:8, 12:19, 12:19] = 0
    boundary[4, 8:12, 7] = 0  # ... joined by a one-voxel bridge
    boundary[4, 11, 7:12] = 0
    seeds = boundary_seeds(boundary, threshold=0.5, min_distance=2.0)
    assert len(np.unique(seeds)) == 3
    with pytest.raises(ValueError, match="min_distance"):
        boundary_seeds(boundary, min_distance=-1)
