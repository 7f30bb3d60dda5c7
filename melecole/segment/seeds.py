"""Seeds for the Mutex Watershed from a boundary map: the cores of the regions it encloses.

A voxel is interior where the boundary probability is below a threshold; its core is where the
distance to the nearest boundary voxel is at least ``min_distance``. Each connected core becomes
one seed, so two neurites whose cores are apart can never be merged, while thin contacts between
them (where the distance falls) carry no seed.
"""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage


def boundary_seeds(boundary: np.ndarray, threshold: float = 0.5, min_distance: float = 3.0) -> np.ndarray:
    """Connected cores of the interior of a boundary map, as uint64 seed ids from 1 (0 = no seed).

    Args:
        boundary: (Z, Y, X) boundary probability in [0, 1].
        threshold: voxels below it are interior.
        min_distance: voxels at least this far (Euclidean, in voxels) from the nearest
            boundary voxel form the cores.

    Raises:
        ValueError: when ``boundary`` is not 3-D or ``min_distance`` is negative.
    """
    boundary = np.asarray(boundary)
    if boundary.ndim != 3:
        raise ValueError(f"boundary {boundary.shape} must be (Z, Y, X)")
    if min_distance < 0:
        raise ValueError(f"min_distance must be non-negative, got {min_distance}")
    interior = boundary < threshold
    distance = ndimage.distance_transform_edt(interior)
    cores = distance >= max(min_distance, 1e-9)
    return cc3d.connected_components(cores, connectivity=6).astype(np.uint64)
