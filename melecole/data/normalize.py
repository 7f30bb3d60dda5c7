"""Raw intensity normalisation shared by training and inference.

The statistics are gathered slab by slab in float64, so a volume larger than memory is
normalised exactly as the same volume held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from melecole.errors import MelecoleError

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Intensity:
    """Mean and standard deviation of a volume's finite voxels, and where it is not finite.

    Attributes:
        mean, std: over the finite voxels (float64 accumulation).
        finite: number of finite voxels.
        nonfinite: number of NaN or infinite voxels.
        first_nonfinite: (z, y, x) of the first one in C order, or None.
    """

    mean: float
    std: float
    finite: int
    nonfinite: int
    first_nonfinite: tuple[int, int, int] | None


def intensity_statistics(read: Callable[[Region], np.ndarray], shape: Sequence[int],
                         slab_voxels: int = 2**24) -> Intensity:
    """Streams a volume in z-slabs of about ``slab_voxels`` voxels and merges their moments.

    Args:
        read: returns the voxels of a region (three slices) of the volume.
        shape: the volume's (Z, Y, X).
        slab_voxels: voxels per read (at least one z-plane).
    """
    shape = tuple(int(s) for s in shape)
    plane = max(1, shape[1] * shape[2])
    step = max(1, slab_voxels // plane)
    count, mean, m2 = 0, 0.0, 0.0
    nonfinite, first = 0, None
    for z0 in range(0, shape[0], step):
        slab = np.asarray(read((slice(z0, min(shape[0], z0 + step)), slice(0, shape[1]), slice(0, shape[2]))))
        values = slab.astype(np.float64, copy=False)
        finite = np.isfinite(values)
        bad = values.size - int(finite.sum())
        if bad:
            if first is None:
                z, y, x = np.unravel_index(int(np.argmin(finite)), values.shape)
                first = (int(z) + z0, int(y), int(x))
            nonfinite += bad
            values = values[finite]
        n = int(values.size)
        if n == 0:
            continue
        slab_mean = float(values.mean())
        slab_m2 = float(((values - slab_mean) ** 2).sum())
        total = count + n
        delta = slab_mean - mean
        mean += delta * n / total
        m2 += slab_m2 + delta * delta * count * n / total
        count = total
    std = float(np.sqrt(m2 / count)) if count else 0.0
    return Intensity(mean=mean, std=std, finite=count, nonfinite=nonfinite, first_nonfinite=first)


def check_normalisable(stats: Intensity, name: str, shape: Sequence[int]) -> None:
    """Raises MelecoleError when a volume has no finite voxel or is constant."""
    if stats.finite == 0:
        raise MelecoleError(f"{name} {tuple(shape)}: no finite values")
    if stats.std == 0:
        raise MelecoleError(f"{name} {tuple(shape)}: constant image (every voxel {stats.mean}), nothing to learn "
                            "or segment")


def apply_normalisation(values: np.ndarray, stats: Intensity) -> np.ndarray:
    """``(values - mean) / std`` as float32."""
    return ((np.asarray(values, dtype=np.float64) - stats.mean) / stats.std).astype(np.float32)


def normalize_raw(raw: np.ndarray, name: str = "raw") -> np.ndarray:
    """Maps a raw EM volume to zero mean and unit standard deviation, as float32.

    Per-volume standardisation lets volumes of different acquisitions (contrast, brightness,
    bit depth) share one model. Non-finite voxels are left out of the statistics. Never
    modifies ``raw``.

    Raises:
        MelecoleError: when the volume has no finite value or is constant, since it then carries
            no image.
    """
    raw = np.asarray(raw)
    stats = intensity_statistics(lambda region: raw[region], raw.shape) if raw.ndim == 3 else _flat_statistics(raw)
    check_normalisable(stats, name, raw.shape)
    return apply_normalisation(raw, stats)


def _flat_statistics(raw: np.ndarray) -> Intensity:
    flat = raw.reshape(1, 1, -1) if raw.size else raw.reshape(0, 1, 1)
    return intensity_statistics(lambda region: flat[region], flat.shape)
