"""Blocks of a volume: shapes aligned to storage chunks, planned in C order.

Pure geometry, no daisy: the serial path, the daisy tasks and the tests share it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from melecole.errors import MelecoleError

Triple = tuple[int, int, int]
Region = tuple[slice, slice, slice]


def block_regions(shape: Sequence[int], block: Sequence[int]) -> list[Region]:
    """The blocks of ``block`` voxels covering a ``shape`` volume, in C order; the last block along
    each axis is cut at the volume's end."""
    starts = [range(0, int(s), int(b)) for s, b in zip(shape, block)]
    return [tuple(slice(z, min(z + b, int(s))) for z, b, s in zip(corner, block, shape))
            for corner in itertools.product(*starts)]


def grid_shape(shape: Sequence[int], block: Sequence[int]) -> Triple:
    """Number of blocks along each axis."""
    return tuple(math.ceil(int(s) / int(b)) for s, b in zip(shape, block))


def aligned_block(block: Sequence[int], chunks: Sequence[int], name: str = "block") -> Triple:
    """``block`` checked to be a positive multiple of the storage ``chunks`` along every axis, so
    two workers never write the same chunk."""
    block = tuple(int(b) for b in block)
    if len(block) != 3 or min(block) < 1:
        raise MelecoleError(f"{name} {block} must be three positive sizes (z, y, x)")
    if any(b % c for b, c in zip(block, chunks)):
        raise MelecoleError(f"{name} {block} must be a multiple of the output chunks {tuple(chunks)} along every "
                            "axis (workers write whole chunks)")
    return block


def automatic_block(shape: Sequence[int], chunks: Sequence[int], bytes_per_voxel: float, budget_bytes: float) -> Triple:
    """The largest chunk-aligned block that fits ``budget_bytes``: start from the whole volume
    (rounded up to chunks) and halve the longest axis until it fits."""
    block = [math.ceil(int(s) / int(c)) * int(c) for s, c in zip(shape, chunks)]
    while math.prod(min(b, int(s)) for b, s in zip(block, shape)) * bytes_per_voxel > budget_bytes:
        extents = [min(b, int(s)) for b, s in zip(block, shape)]
        axis = max(range(3), key=lambda a: (extents[a] if block[a] > chunks[a] else -1, -a))
        if block[axis] <= chunks[axis]:
            break  # one chunk per axis: the smallest block there is
        block[axis] = max(int(chunks[axis]), math.ceil(block[axis] / 2 / chunks[axis]) * int(chunks[axis]))
    return tuple(block)


def grow(region: Region, before: int, after: int, shape: Sequence[int]) -> Region:
    """``region`` grown by ``before`` voxels at its lower faces and ``after`` at its upper ones,
    clipped to the volume."""
    return tuple(slice(max(0, r.start - int(before)), min(int(s), r.stop + int(after))) for r, s in zip(region, shape))


def inner(region: Region, outer: Region) -> Region:
    """``region`` as slices into the array of ``outer`` that contains it."""
    return tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, outer))


def block_index(region: Region, block: Sequence[int], shape: Sequence[int]) -> int:
    """The C-order index of the block whose write region is ``region``."""
    counts = grid_shape(shape, block)
    corner = [r.start // int(b) for r, b in zip(region, block)]
    return int(np.ravel_multi_index(corner, counts))
