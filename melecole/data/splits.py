"""Splitting one labelled block into two along an axis."""

from __future__ import annotations

import numpy as np

from melecole.errors import MelecoleError

Pair = tuple[np.ndarray, np.ndarray]


def split_block(raw: np.ndarray, labels: np.ndarray, axis: int, fraction: float) -> tuple[Pair, Pair]:
    """Cuts off the last ``fraction`` of a block along ``axis``.

    A slab that spans the two other axes in full sees the same mix of orientations as the
    rest of the block, which a thin z-slab does not.

    Returns:
        ((raw, labels) of the first part, (raw, labels) of the cut-off part), as copies.
    """
    size = raw.shape[axis]
    cut = int(round(size * (1 - fraction)))
    if not 0 < cut < size:
        raise MelecoleError(f"cannot split a block of shape {raw.shape} at fraction {fraction} along axis {axis}")
    head = tuple(slice(0, cut) if a == axis else slice(None) for a in range(raw.ndim))
    tail = tuple(slice(cut, None) if a == axis else slice(None) for a in range(raw.ndim))
    return (raw[head].copy(), labels[head].copy()), (raw[tail].copy(), labels[tail].copy())
