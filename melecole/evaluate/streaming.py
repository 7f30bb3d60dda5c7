"""Pair counts of label volumes read block by block, never whole.

A volume here is a numpy array or anything with ``shape``, ``dtype`` and ``read(region)``
(region: one slice per axis; :class:`melecole.io.Volume` is one, with 3 axes z, y, x). Blocks
of volumes follow the storage chunks (``chunks`` attribute, when there is one) so that every
chunk is decoded once; the next block is read in background threads while the current one is
counted, so decoding and counting overlap wherever the reader releases the GIL. Arrays are
cut into views along their first axis, without copies.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from melecole.blockwise.geometry import automatic_block, block_regions
from melecole.errors import MelecoleError
from melecole.evaluate.pair_counts import PairCounts

__all__ = ["BLOCK_VOXELS", "check_pair", "count_pairs"]

# A few million voxels per block: 32 MiB per uint64 volume, two blocks of each volume in
# memory at a time (4 planes of 1024 x 1024 stored contiguously, 16 chunks of 64^3). Per-block
# costs vanish: on 1e8 voxels, blocks of 1 to 16 Mi voxels took the same time within noise.
BLOCK_VOXELS = 1 << 22


def check_pair(seg, gt) -> None:
    """Refuses a segmentation and ground truth of different shapes or non-integer dtypes.

    Raises:
        MelecoleError: the message quotes both shapes, or the shape and dtype at fault.
    """
    if tuple(seg.shape) != tuple(gt.shape):
        raise MelecoleError(f"segmentation {tuple(seg.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    for name, labels in (("segmentation", seg), ("ground truth", gt)):
        if not np.issubdtype(labels.dtype, np.integer):
            raise MelecoleError(f"{name} {tuple(labels.shape)} has dtype {labels.dtype}; "
                                "label volumes must have an integer dtype")


def count_pairs(segs: Sequence, gt, ignore_gt: Sequence[int] = (0,),
                block_voxels: int = BLOCK_VOXELS) -> list[PairCounts]:
    """The pair counts of several segmentations against one ground truth, in one pass over it.

    Args:
        segs: Segmentations, each an array or a readable volume of ``gt``'s shape.
        gt: Ground truth, an array or a readable volume.
        ignore_gt: Ground-truth labels whose voxels are not counted.
        block_voxels: Voxels per block (a target: a block holds at least one storage chunk).

    Returns:
        One :class:`PairCounts` per segmentation.

    Raises:
        MelecoleError: A shape or dtype check of :func:`check_pair` fails, or a read fails.
    """
    for seg in segs:
        check_pair(seg, gt)
    counts = [PairCounts(ignore_gt) for _ in segs]
    volumes = [gt, *segs]
    if all(isinstance(volume, np.ndarray) for volume in volumes):
        blocks = _array_blocks(volumes, block_voxels)
    else:
        blocks = _read_ahead([_reader(volume) for volume in volumes], _regions(volumes, block_voxels))
    with contextlib.closing(blocks):  # on an error, stops the reads ahead at once
        for gt_block, *seg_blocks in blocks:
            for count, seg_block in zip(counts, seg_blocks):
                count.add(seg_block, gt_block)
    return counts


def _array_blocks(arrays: list[np.ndarray], block_voxels: int) -> Iterator[list[np.ndarray]]:
    """Views of ``block_voxels`` or so along the first axis (of the flat array when 0-d)."""
    arrays = [array.reshape(1) if array.ndim == 0 else array for array in arrays]
    shape = arrays[0].shape
    rows = max(1, block_voxels // max(1, math.prod(shape[1:])))
    for start in range(0, shape[0], rows):
        yield [array[start:start + rows] for array in arrays]


def _regions(volumes: list, block_voxels: int) -> list[tuple[slice, ...]]:
    """Chunk-aligned blocks of about ``block_voxels`` covering 3-axis volumes, in C order."""
    shape = tuple(volumes[0].shape)
    if len(shape) != 3:
        raise MelecoleError(f"volumes read block by block need 3 axes (z, y, x), found shape {shape}")
    # Chunked volumes: blocks of whole chunks (the larger chunk per axis when they differ, so
    # a chunk is decoded once or twice). Only contiguous ones: whole planes read fastest.
    stored = [tuple(max(1, min(int(c), size)) for c, size in zip(volume.chunks, shape))
              for volume in volumes if getattr(volume, "chunks", None)]
    chunks = tuple(max(axis) for axis in zip(*stored)) if stored else (1, shape[1], shape[2])
    return block_regions(shape, automatic_block(shape, chunks, 1, block_voxels))


def _reader(volume) -> Callable[[tuple[slice, ...]], np.ndarray]:
    if isinstance(volume, np.ndarray):
        return volume.__getitem__
    return volume.read


def _read_ahead(readers: list[Callable], regions: list[tuple[slice, ...]]) -> Iterator[list[np.ndarray]]:
    """Each region's blocks, one per reader; the next region is read while this one is used."""
    with ThreadPoolExecutor(max_workers=len(readers), thread_name_prefix="evaluate-read") as pool:
        ahead = None
        for region in regions:
            reading = [pool.submit(read, region) for read in readers]
            if ahead is not None:
                yield [future.result() for future in ahead]
            ahead = reading
        if ahead is not None:
            yield [future.result() for future in ahead]
