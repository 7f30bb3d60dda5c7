"""The global tile grid of sliding-window inference, and which tiles touch a region.

Every prediction, of a whole volume or of one block of it, uses the same grid: tiles of
``patch`` voxels every ``patch - overlap`` voxels from 0, plus a last tile ending at the volume's
end, on the volume padded up to the patch where it is smaller. A region's prediction blends
exactly the tiles of that grid that touch it, in C order, so a block of a blockwise run gets the
same numbers as the same voxels of a whole-volume run.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Triple = tuple[int, int, int]
Region = tuple[slice, slice, slice]


def as_triple(value: int | Sequence[int], name: str) -> Triple:
    """``value`` as three ints (z, y, x); one int is used for every axis."""
    values = (int(value),) * 3 if np.isscalar(value) else tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 entries (z, y, x), got {value}")
    return values


def tile_starts(size: int, patch: int, overlap: int) -> list[int]:
    """Start indices of the tiles along one axis of length ``size >= patch``.

    Steps of ``patch - overlap``, plus a last tile ending exactly at ``size``.
    """
    last = size - patch
    starts = list(range(0, last + 1, patch - overlap))
    if starts[-1] != last:
        starts.append(last)
    return starts


def full_region(shape: Sequence[int]) -> Region:
    """The region covering a whole ``(Z, Y, X)`` volume."""
    return tuple(slice(0, int(s)) for s in shape)


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``patch`` voxels overlapping by ``overlap`` over a ``shape`` volume.

    Attributes:
        shape: the volume's (Z, Y, X).
        patch: tile shape (Z, Y, X).
        overlap: voxels shared by neighbouring tiles, per axis, below the patch.
    """

    shape: Triple
    patch: Triple
    overlap: Triple

    def __post_init__(self) -> None:
        if min(self.shape) < 1 or min(self.patch) < 1:
            raise ValueError(f"volume {self.shape} and patch {self.patch} must be positive")
        if any(o < 0 or o >= p for o, p in zip(self.overlap, self.patch)):
            raise ValueError(f"overlap {self.overlap} must be >= 0 and below patch {self.patch}")

    @classmethod
    def of(cls, shape: Sequence[int], patch: int | Sequence[int], overlap: int | Sequence[int]) -> TileGrid:
        """A grid from loosely typed arguments (one int stands for all three axes)."""
        return cls(as_triple(shape, "shape"), as_triple(patch, "patch"), as_triple(overlap, "overlap"))

    @property
    def padded_shape(self) -> Triple:
        """The volume padded at its end up to the patch along axes where it is smaller."""
        return tuple(max(s, p) for s, p in zip(self.shape, self.patch))

    def starts(self, region: Region | None = None) -> list[Triple]:
        """Start corners of the tiles that overlap ``region`` (default: all), in C order."""
        region = region or full_region(self.shape)
        check_region(region, self.shape)
        per_axis = []
        for axis, (size, p, o) in enumerate(zip(self.padded_shape, self.patch, self.overlap)):
            low, high = region[axis].start, region[axis].stop
            per_axis.append([s for s in tile_starts(size, p, o) if s < high and s + p > low])
        return list(itertools.product(*per_axis))

    def box(self, start: Triple) -> Region:
        """The tile at ``start`` as slices."""
        return tuple(slice(s, s + p) for s, p in zip(start, self.patch))


def check_region(region: Region, shape: Sequence[int]) -> None:
    """Raises ValueError unless ``region`` is three non-empty unit-step slices inside ``shape``."""
    if len(region) != 3 or any(not isinstance(r, slice) for r in region):
        raise ValueError(f"region must be three slices (z, y, x), got {region}")
    for r, size in zip(region, shape):
        if r.start is None or r.stop is None or r.step not in (None, 1) or not 0 <= r.start < r.stop <= size:
            raise ValueError(f"region {region} is not inside the volume {tuple(shape)}")


def region_shape(region: Region) -> Triple:
    """The (Z, Y, X) extent of a region."""
    return tuple(r.stop - r.start for r in region)


def union_box(boxes: Sequence[Region]) -> Region:
    """The smallest region containing every box."""
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def overlap_slices(box: Region, region: Region) -> tuple[Region, Region] | None:
    """Where ``box`` and ``region`` meet, as slices into the box and into the region; None if
    they do not."""
    inside, target = [], []
    for b, r in zip(box, region):
        low, high = max(b.start, r.start), min(b.stop, r.stop)
        if low >= high:
            return None
        inside.append(slice(low - b.start, high - b.start))
        target.append(slice(low - r.start, high - r.start))
    return tuple(inside), tuple(target)


def tile_runs(size: int, patch: int, overlap: int, block: int) -> int:
    """Tile runs along one axis when a ``size`` axis is predicted in blocks of ``block`` voxels: a
    tile touching two blocks runs once for each."""
    starts = tile_starts(max(size, patch), patch, overlap)
    runs = 0
    for low in range(0, size, block):
        high = min(size, low + block)
        runs += sum(1 for s in starts if s < high and s + patch > low)
    return runs


def cheapest_block(grid: TileGrid, chunks: Sequence[int], bytes_per_voxel: float, budget_bytes: float) -> Triple:
    """The chunk-aligned block that fits ``budget_bytes`` and runs the fewest tiles in total
    (ties: the fewest blocks). At worst one chunk per axis."""
    options = []
    for size, chunk, patch, overlap in zip(grid.shape, chunks, grid.patch, grid.overlap):
        sizes = sorted({min(size, k * chunk) for k in range(1, -(-size // chunk) + 1)})
        options.append([(b, tile_runs(size, patch, overlap, b), -(-size // b)) for b in sizes])
    best, best_key = None, None
    for combo in itertools.product(*options):
        voxels = int(np.prod([b for b, _, _ in combo], dtype=np.int64))
        if voxels * bytes_per_voxel > budget_bytes and best is not None:
            continue
        key = (voxels * bytes_per_voxel > budget_bytes, int(np.prod([r for _, r, _ in combo], dtype=np.int64)),
               int(np.prod([n for _, _, n in combo], dtype=np.int64)), -voxels)
        if best_key is None or key < best_key:
            best, best_key = tuple(-(-b // c) * c for (b, _, _), c in zip(combo, chunks)), key
    return best
