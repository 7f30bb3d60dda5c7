"""Affinities -> Mutex Watershed -> small-segment clean-up, as one pure function."""

from __future__ import annotations

import numpy as np

from melecole.segment.mutex import mutex_watershed
from melecole.segment.postprocess import merge_small_segments


def segment_affinities(affinities: np.ndarray, offsets: list[tuple[int, int, int]], attractive: int,
                       strides: tuple[int, int, int], randomize_strides: bool, min_size: int,
                       boundary: np.ndarray | None = None, foreground_threshold: float = 1.0,
                       seed: int = 0) -> np.ndarray:
    """Segments affinities (C, Z, Y, X) into a uint64 label volume (Z, Y, X).

    Voxels whose boundary probability is at least ``foreground_threshold`` are left as
    background 0 (a threshold of 1 keeps every voxel). Segments smaller than ``min_size``
    voxels are merged into their largest-contact neighbour.
    """
    if affinities.shape[0] != len(offsets):
        raise ValueError(f"affinities {affinities.shape} have {affinities.shape[0]} channels for {len(offsets)} offsets")
    mask = None
    if boundary is not None and foreground_threshold < 1.0:
        if boundary.shape != affinities.shape[1:]:
            raise ValueError(f"boundary {boundary.shape} and affinities {affinities.shape} differ in shape")
        mask = boundary < foreground_threshold
    segmentation = mutex_watershed(affinities, offsets, attractive=attractive, strides=strides,
                                   randomize_strides=randomize_strides, mask=mask, seed=seed)
    return merge_small_segments(segmentation, min_size)
