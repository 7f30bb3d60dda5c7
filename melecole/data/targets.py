"""Training targets from a patch of ground-truth labels (pure numpy, inputs never changed)."""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np
from scipy import ndimage


def _check_labels(labels: np.ndarray, what: str) -> None:
    if labels.ndim != 3:
        raise ValueError(f"{what}: labels {labels.shape} must be (z, y, x)")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"{what}: labels must be integers, got {labels.dtype}")


def boundary_map(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Marks voxels on an instance boundary or without a label.

    A voxel is boundary (1) when its label is 0, or when any of its 6 face neighbours holds a
    different label. Both voxels on either side of a label change are marked, so the map does
    not depend on the direction of an axis and touching neurons (datasets with no 0 between
    them) get a 2-voxel-thick boundary. Voxels beyond the volume's edge are not neighbours:
    the patch border itself is not a boundary.

    ``width > 1`` erodes every instance further: a voxel is boundary when a voxel within
    ``width`` face steps (city-block distance) is 0 or holds another label, so a label change
    gets a ``2 * width``-voxel-thick boundary. Thicker boundaries are easier to learn and keep
    thin membranes from merging neurons.

    Args:
        labels: (Z, Y, X) integer ground truth, 0 = boundary / unlabelled.
        width: erosion width in voxels, >= 1; 1 marks the face neighbours of a change only.

    Returns:
        (Z, Y, X) float32 map of 0 and 1.

    Raises:
        ValueError: if ``labels`` is not a 3-D integer array or ``width`` < 1.
    """
    _check_labels(labels, "boundary_map")
    if width < 1:
        raise ValueError(f"boundary_map: width must be at least 1, got {width}")
    boundary = labels == 0  # (Z, Y, X) bool, a new array
    for axis in range(3):
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis] = slice(None, -1)
        upper[axis] = slice(1, None)
        change = labels[tuple(lower)] != labels[tuple(upper)]
        boundary[tuple(lower)] |= change
        boundary[tuple(upper)] |= change
    if width > 1:
        # Interior at width w = interior at width 1 eroded w - 1 times by the 6-neighbourhood;
        # border_value=1 keeps the patch edge from eroding, as above.
        cross = ndimage.generate_binary_structure(3, 1)
        boundary = ~ndimage.binary_erosion(~boundary, cross, iterations=width - 1, border_value=1)
    return boundary.astype(np.float32)


def _shifted_pair(shape: Sequence[int], offset: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    # Slices selecting every v whose v + offset lies in the patch, and those v + offset.
    here, there = [], []
    for size, step in zip(shape, offset):
        step = max(-size, min(size, int(step)))  # longer than the patch: nothing pairs up
        here.append(slice(max(0, -step), size - max(0, step)))
        there.append(slice(max(0, step), size - max(0, -step)))
    return tuple(here), tuple(there)


def affinities(labels: np.ndarray, offsets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Affinity targets at any offsets, with the mask of voxels whose neighbour is in the patch.

    Channel ``c`` at offset ``o = (dz, dy, dx)`` compares voxel ``v`` with ``v + o``: the
    affinity is 1 when both carry the same label and it is not 0, else 0. Where ``v + o`` falls
    outside the patch nothing is known, so the affinity is 0 and the mask is 0 there.

    Args:
        labels: (Z, Y, X) integer ground truth, 0 = boundary / unlabelled.
        offsets: C offsets (dz, dy, dx), any sign and length.

    Returns:
        affinities (C, Z, Y, X) float32 of 0 and 1; mask (C, Z, Y, X) float32 of 0 and 1.

    Raises:
        ValueError: if ``labels`` is not a 3-D integer array or an offset is not 3 integers.
    """
    _check_labels(labels, "affinities")
    offsets = [tuple(int(o) for o in offset) for offset in offsets]
    if any(len(offset) != 3 for offset in offsets):
        raise ValueError(f"affinities: offsets {offsets} must each be (dz, dy, dx)")
    affs = np.zeros((len(offsets), *labels.shape), np.float32)  # (C, Z, Y, X)
    mask = np.zeros_like(affs)
    for channel, offset in enumerate(offsets):
        here, there = _shifted_pair(labels.shape, offset)
        same = (labels[here] == labels[there]) & (labels[here] != 0)
        affs[channel][here] = same
        mask[channel][here] = 1
    return affs, mask


def balance_weights(target: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-voxel loss weights that give the positives and the negatives of a target equal weight.

    Boundary voxels are few (often 10-30 %); without weights a loss is satisfied by predicting
    interior everywhere. Each positive voxel gets ``n / (2 n_pos)``, each negative
    ``n / (2 n_neg)`` (counts over voxels inside ``mask``), so each class totals ``n / 2`` and
    the mean weight inside the mask is 1. Voxels outside the mask get 0. With one class only,
    every voxel in the mask gets 1.

    Args:
        target: any shape, values 0 or 1 (e.g. :func:`boundary_map` or :func:`affinities`).
        mask: same shape, 1 = train on this voxel; None = everywhere.

    Returns:
        float32 weights of ``target``'s shape.

    Raises:
        ValueError: if ``mask`` has another shape.
    """
    if mask is not None and mask.shape != target.shape:
        raise ValueError(f"balance_weights: target {target.shape} and mask {mask.shape} differ in shape")
    inside = np.ones(target.shape, bool) if mask is None else mask > 0
    positive = (target > 0.5) & inside
    negative = ~(target > 0.5) & inside
    count, n_pos, n_neg = int(inside.sum()), int(positive.sum()), int(negative.sum())
    weights = inside.astype(np.float32)
    if n_pos and n_neg:
        weights[positive] = count / (2 * n_pos)
        weights[negative] = count / (2 * n_neg)
    return weights


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
