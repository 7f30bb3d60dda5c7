"""Fragments + hierarchical agglomeration of nearest-neighbour affinities (waterz).

The only module that imports waterz (funkelab's watershed and agglomeration, as used by the lsd
pipeline). Regions are merged in order of their edge score (one minus the mean or a quantile of
the affinities along the shared boundary) until the score passes a threshold; one pass yields
the segmentations of every threshold in increasing order.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np

SCORING = {
    "mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
    "median": "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, false>>",
    "q75": "OneMinus<HistogramQuantileAffinity<RegionGraphType, 75, ScoreValue, 256, false>>",
}


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    # waterz reports progress on standard output, from Python and from C++ (file descriptor 1);
    # either would corrupt the `--json` output of the command line.
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def boundary_affinities(boundary: np.ndarray) -> np.ndarray:
    """Nearest-neighbour affinities (3, Z, Y, X) from a boundary probability map (Z, Y, X).

    Channel ``c`` pairs each voxel with its predecessor along axis ``c`` (offsets (-1, 0, 0),
    (0, -1, 0), (0, 0, -1)): affinity = 1 - max of the two boundary probabilities. Pairs that
    leave the volume get 0.
    """
    boundary = np.asarray(boundary, dtype=np.float32)
    if boundary.ndim != 3:
        raise ValueError(f"boundary {boundary.shape} must be (Z, Y, X)")
    affinities = np.zeros((3,) + boundary.shape, dtype=np.float32)
    for axis in range(3):
        here = [slice(None)] * 3
        before = [slice(None)] * 3
        here[axis], before[axis] = slice(1, None), slice(None, -1)
        affinities[(axis, *here)] = 1.0 - np.maximum(boundary[tuple(here)], boundary[tuple(before)])
    return affinities


def agglomerate(affinities: np.ndarray, thresholds: Sequence[float], scoring: str = "mean") -> list[np.ndarray]:
    """Segmentations (Z, Y, X) uint64 for each threshold, from affinities (3, Z, Y, X).

    Channels are the nearest-neighbour affinities at offsets (-1, 0, 0), (0, -1, 0), (0, 0, -1),
    1 = same object. A higher threshold merges more. Never modifies ``affinities``.
    """
    import waterz

    if affinities.ndim != 4 or affinities.shape[0] != 3:
        raise ValueError(f"affinities {affinities.shape} must be (3, Z, Y, X) nearest-neighbour channels")
    if scoring not in SCORING:
        raise ValueError(f"scoring '{scoring}' is not one of {', '.join(SCORING)}")
    ordered = sorted(float(t) for t in thresholds)
    if list(ordered) != [float(t) for t in thresholds]:
        raise ValueError(f"thresholds {list(thresholds)} must be increasing")
    affs = np.ascontiguousarray(affinities, dtype=np.float32)
    results = []
    with _quiet_stdout():
        # waterz reuses one output array between thresholds: copy each result.
        for segmentation in waterz.agglomerate(affs, ordered, scoring_function=SCORING[scoring]):
            results.append(np.array(segmentation, dtype=np.uint64, copy=True))
    return results
