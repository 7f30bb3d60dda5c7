"""Seeded watershed on a boundary map: the classical baseline every report shows beside ours.

Seeds are maxima of the smoothed distance transform of the thresholded boundary map; the
watershed floods a blend of boundary probability and distance (elf's distance transform
watershed, after Beier et al. 2017).
"""

from __future__ import annotations

import numpy as np
from elf.segmentation.watershed import distance_transform_watershed

from melecole.segment.postprocess import relabel_consecutive


def boundary_watershed(boundary: np.ndarray, threshold: float = 0.5, sigma_seeds: float = 2.0,
                       min_size: int = 50) -> np.ndarray:
    """Segments a boundary probability map (Z, Y, X) into uint64 labels, consecutive from 1."""
    boundary = np.asarray(boundary, dtype=np.float32)
    if boundary.ndim != 3:
        raise ValueError(f"boundary {boundary.shape} must be (Z, Y, X)")
    segmentation, _ = distance_transform_watershed(boundary.copy(), threshold, sigma_seeds, min_size=min_size)
    return relabel_consecutive(segmentation)
