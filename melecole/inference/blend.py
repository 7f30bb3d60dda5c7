"""Blending overlapping tile predictions into one region, with bounded accumulators.

Each tile's values are weighted by a smooth window, largest at the tile's centre where the
network has the most context and small but never zero at its faces, times an optional validity
mask (a tile cannot give the affinity of a pair whose partner lies outside it). Only the part of
a tile inside the region is accumulated, so memory is one value volume per output over the
region, whatever the volume's size.

The window is separable and the tiles form a grid, so the sum of the weights at a voxel is a
product of one sum per axis. For outputs whose validity is separable too (valid along each axis
on its own, as "the partner lies inside the tile" is), the weights are computed at the end from
those per-axis sums instead of being accumulated; only a validity that is not separable (votes
of remapped test-time transforms) keeps a weight volume.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from melecole.inference.tiling import Region, Triple, overlap_slices, region_shape

# Per-axis validity of a tile: three (C, P_axis) arrays, the tile's validity being their product.
Separable = tuple[np.ndarray, np.ndarray, np.ndarray]
# key -> (values (C, Z, Y, X) over the tile, validity: None (valid everywhere), Separable, or an
# array (C or 1, Z, Y, X) of weights)
TileOutput = Mapping[str, tuple[np.ndarray, "np.ndarray | Separable | None"]]


def window_axes(patch: Sequence[int]) -> list[np.ndarray]:
    """The window's factor along each axis: ``sin(pi * (i + 0.5) / P)``, float32."""
    return [np.sin(np.pi * (np.arange(p) + 0.5) / p).astype(np.float32) for p in patch]


def blend_window(patch: Sequence[int]) -> np.ndarray:
    """Separable sine window ``prod_axis sin(pi * (i + 0.5) / P)``: 1 near the centre, small but
    positive at the faces. float32 ``(Z, Y, X)``."""
    axes = window_axes(patch)
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


def _product(masks: Separable) -> np.ndarray:
    return masks[0][:, :, None, None] * masks[1][:, None, :, None] * masks[2][:, None, None, :]


class RegionBlender:
    """Accumulates windowed tile outputs over one region; :meth:`result` divides by the weights.

    Tiles must be added in one fixed order (C order of the tile grid) for results to be
    reproducible to the last bit: a voxel's value is a sum over the tiles covering it. The tiles
    added must form a grid (every combination of the per-axis starts), as the tiles of a region
    do.
    """

    def __init__(self, region: Region, patch: Triple):
        self.region = region
        self.patch = tuple(patch)
        self.window = blend_window(self.patch)  # (Z, Y, X)
        self._sums: dict[str, np.ndarray] = {}  # key -> (C, *region)
        self._weights: dict[str, np.ndarray] = {}  # key -> (C or 1, *region), non-separable validity only
        self._separable: dict[str, Separable] = {}  # key -> per-axis validity (ones for "valid everywhere")
        self._weighted: dict[str, np.ndarray] = {}  # key -> window x separable validity over the tile
        self._starts: list[set[int]] = [set(), set(), set()]
        self._tiles = 0

    def _tile_weight(self, key: str, channels: int, valid) -> np.ndarray:
        if key not in self._weighted:
            if valid is None:
                valid = tuple(np.ones((1, p), dtype=np.float32) for p in self.patch)
            self._separable[key] = tuple(np.asarray(m, dtype=np.float32) for m in valid)
            self._weighted[key] = self.window[None] * _product(self._separable[key])  # (C or 1, Z, Y, X)
        return self._weighted[key]

    def add(self, start: Triple, outputs: TileOutput) -> None:
        """Adds one tile's outputs; ``start`` is the tile's corner in volume coordinates."""
        box = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
        where = overlap_slices(box, self.region)
        if where is None:
            return
        for axis in range(3):
            self._starts[axis].add(int(start[axis]))
        self._tiles += 1
        inside, target = where
        if self._sums and set(outputs) != set(self._sums):
            raise ValueError(f"tile outputs {sorted(outputs)} differ from earlier ones {sorted(self._sums)}")
        for key, (values, valid) in outputs.items():
            if values.ndim != 4 or tuple(values.shape[1:]) != self.patch:
                raise ValueError(f"tile output '{key}' has shape {values.shape}, expected (C, {self.patch})")
            if key not in self._sums:
                self._sums[key] = np.zeros((values.shape[0],) + region_shape(self.region), dtype=np.float32)
            if self._sums[key].shape[0] != values.shape[0]:
                raise ValueError(f"tile output '{key}' changed its channel count to {values.shape[0]}")
            if isinstance(valid, np.ndarray) or key in self._weights:
                if key in self._separable:
                    raise ValueError(f"tile output '{key}' switched from separable to voxelwise validity")
                if not isinstance(valid, np.ndarray):
                    valid = _product(valid) if valid is not None else np.ones((1,) + self.patch, dtype=np.float32)
                weight = self.window[None][(slice(None),) + inside] * valid[(slice(None),) + inside]
                if key not in self._weights:
                    self._weights[key] = np.zeros((weight.shape[0],) + region_shape(self.region), dtype=np.float32)
                self._weights[key][(slice(None),) + target] += weight
            else:
                weight = self._tile_weight(key, values.shape[0], valid)[(slice(None),) + inside]
            self._sums[key][(slice(None),) + target] += values[(slice(None),) + inside] * weight

    def _axis_weights(self, key: str) -> list[np.ndarray]:
        """Per axis, ``(C or 1, extent)``: the sum over the grid's starts of window x validity."""
        axes = []
        for axis, (r, p, w) in enumerate(zip(self.region, self.patch, window_axes(self.patch))):
            masks = self._separable[key][axis]  # (C or 1, P)
            total = np.zeros((masks.shape[0], r.stop - r.start), dtype=np.float32)
            coords = np.arange(r.start, r.stop)
            for s in sorted(self._starts[axis]):
                local = coords - s
                hit = (local >= 0) & (local < p)
                total[:, hit] += w[local[hit]] * masks[:, local[hit]]
            axes.append(total)
        return axes

    def result(self) -> dict[str, np.ndarray]:
        """float32 ``(C, *region)`` per key: the weighted mean, 0 where no tile gave a value.

        The accumulators are divided in place: the blender cannot be added to afterwards.
        """
        if self._separable and self._tiles != int(np.prod([len(s) for s in self._starts])):
            raise ValueError(f"{self._tiles} tiles do not form a grid of starts {[sorted(s) for s in self._starts]}")
        out = {}
        for key, total in self._sums.items():
            if key in self._weights:
                weight = np.broadcast_to(self._weights[key], total.shape)
                np.divide(total, weight, out=total, where=weight > 0)
                total[weight <= 0] = 0.0
            else:
                wz, wy, wx = self._axis_weights(key)
                for channel in range(total.shape[0]):
                    pick = [min(channel, len(a) - 1) for a in (wz, wy, wx)]
                    weight = wz[pick[0]][:, None, None] * wy[pick[1]][None, :, None] * wx[pick[2]][None, None, :]
                    np.divide(total[channel], weight, out=total[channel], where=weight > 0)
                    total[channel][weight <= 0] = 0.0
            out[key] = total
        self._sums = {}
        return out


def blend_tiles(tiles: Iterable[tuple[Triple, TileOutput]], region: Region, patch: Triple) -> dict[str, np.ndarray]:
    """Blends ``(start, outputs)`` pairs over ``region`` (see :class:`RegionBlender`)."""
    blender = RegionBlender(region, patch)
    for start, outputs in tiles:
        blender.add(start, outputs)
    return blender.result()
