"""Blending overlapping tile predictions into one region, with bounded accumulators.

Each tile's values are weighted by a smooth window, largest at the tile's centre where the
network has the most context and small but never zero at its faces, times an optional validity
mask (a tile cannot give the affinity of a pair whose partner lies outside it). Only the part of
a tile inside the region is accumulated, so memory is one value and one weight volume per output
over the region, whatever the volume's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from melecole.inference.tiling import Region, Triple, overlap_slices, region_shape

# key -> (values (C, Z, Y, X) over the tile, validity (C or 1, Z, Y, X) or None = valid everywhere)
TileOutput = Mapping[str, tuple[np.ndarray, np.ndarray | None]]


def blend_window(patch: Sequence[int]) -> np.ndarray:
    """Separable sine window ``prod_axis sin(pi * (i + 0.5) / P)``: 1 near the centre, small but
    positive at the faces. float32 ``(Z, Y, X)``."""
    axes = [np.sin(np.pi * (np.arange(p) + 0.5) / p) for p in patch]
    return (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).astype(np.float32)


class RegionBlender:
    """Accumulates windowed tile outputs over one region; :meth:`result` divides by the weights.

    Tiles must be added in one fixed order (C order of the tile grid) for results to be
    reproducible to the last bit: a voxel's value is a sum over the tiles covering it.
    """

    def __init__(self, region: Region, patch: Triple):
        self.region = region
        self.patch = tuple(patch)
        self.window = blend_window(self.patch)  # (Z, Y, X)
        self._sums: dict[str, np.ndarray] = {}  # key -> (C, *region)
        self._weights: dict[str, np.ndarray] = {}  # key -> (C or 1, *region)

    def add(self, start: Triple, outputs: TileOutput) -> None:
        """Adds one tile's outputs; ``start`` is the tile's corner in volume coordinates."""
        box = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
        where = overlap_slices(box, self.region)
        if where is None:
            return
        inside, target = where
        if self._sums and set(outputs) != set(self._sums):
            raise ValueError(f"tile outputs {sorted(outputs)} differ from earlier ones {sorted(self._sums)}")
        window = self.window[inside]
        for key, (values, valid) in outputs.items():
            if values.ndim != 4 or tuple(values.shape[1:]) != self.patch:
                raise ValueError(f"tile output '{key}' has shape {values.shape}, expected (C, {self.patch})")
            weight = window[None] if valid is None else window[None] * valid[(slice(None),) + inside]
            if key not in self._sums:
                self._sums[key] = np.zeros((values.shape[0],) + region_shape(self.region), dtype=np.float32)
                self._weights[key] = np.zeros((weight.shape[0],) + region_shape(self.region), dtype=np.float32)
            if self._sums[key].shape[0] != values.shape[0] or self._weights[key].shape[0] != weight.shape[0]:
                raise ValueError(f"tile output '{key}' changed its channel count to {values.shape[0]}")
            self._sums[key][(slice(None),) + target] += values[(slice(None),) + inside] * weight
            self._weights[key][(slice(None),) + target] += weight

    def result(self) -> dict[str, np.ndarray]:
        """float32 ``(C, *region)`` per key: the weighted mean, 0 where no tile gave a value."""
        out = {}
        for key, total in self._sums.items():
            weight = np.broadcast_to(self._weights[key], total.shape)
            out[key] = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
        return out


def blend_tiles(tiles: Iterable[tuple[Triple, TileOutput]], region: Region, patch: Triple) -> dict[str, np.ndarray]:
    """Blends ``(start, outputs)`` pairs over ``region`` (see :class:`RegionBlender`)."""
    blender = RegionBlender(region, patch)
    for start, outputs in tiles:
        blender.add(start, outputs)
    return blender.result()
