"""Training targets from a patch of ground-truth labels (pure numpy, inputs never changed)."""

from __future__ import annotations

import cc3d
import numpy as np


def _check_labels(labels: np.ndarray, what: str) -> None:
    if labels.ndim != 3:
        raise ValueError(f"{what}: labels {labels.shape} must be (z, y, x)")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"{what}: labels must be integers, got {labels.dtype}")


def boundary_map(labels: np.ndarray) -> np.ndarray:
    """Marks voxels on an instance boundary or without a label.

    A voxel is boundary (1) when its label is 0, or when any of its 6 face neighbours holds a
    different label. Both voxels on either side of a label change are marked, so the map does
    not depend on the direction of an axis and touching neurons (datasets with no 0 between
    them) get a 2-voxel-thick boundary. Voxels beyond the volume's edge are not neighbours:
    the patch border itself is not a boundary.

    Args:
        labels: (Z, Y, X) integer ground truth, 0 = boundary / unlabelled.

    Returns:
        (Z, Y, X) float32 map of 0 and 1.

    Raises:
        ValueError: if ``labels`` is not a 3-D integer array.
    """
    _check_labels(labels, "boundary_map")
    boundary = labels == 0  # (Z, Y, X) bool, a new array
    for axis in range(3):
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis] = slice(None, -1)
        upper[axis] = slice(1, None)
        change = labels[tuple(lower)] != labels[tuple(upper)]
        boundary[tuple(lower)] |= change
        boundary[tuple(upper)] |= change
    return boundary.astype(np.float32)


def patch_instances(labels: np.ndarray) -> np.ndarray:
    """Relabels a training patch into 6-connected instances.

    A neuron that leaves the patch and re-enters it appears as separate pieces; the loss must
    not pull those pieces to one embedding, since nothing inside the patch links them. Each
    6-connected region of one ground-truth label gets its own id; label 0 stays 0.

    Args:
        labels: (Z, Y, X) integer ground truth, 0 = ignore.

    Returns:
        (Z, Y, X) int64 instance ids, 1..N for the N pieces, 0 where ``labels`` is 0.

    Raises:
        ValueError: if ``labels`` is not a 3-D integer array.
    """
    _check_labels(labels, "patch_instances")
    # cc3d reads the array without writing to it; contiguity avoids an internal copy per call.
    pieces = cc3d.connected_components(np.ascontiguousarray(labels), connectivity=6)
    return pieces.astype(np.int64, copy=False)
