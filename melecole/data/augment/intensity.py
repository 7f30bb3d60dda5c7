"""Intensity augmentations of a normalised raw patch (labels are never touched; inputs never changed).

Raw is normalised to zero mean and unit standard deviation (melecole.data.normalize), so
brightness and noise are expressed in units of the volume's standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def _check_raw(raw: np.ndarray, what: str) -> None:
    if raw.ndim != 3:
        raise ValueError(f"{what}: raw {raw.shape} must be (z, y, x)")


def grayscale(raw: np.ndarray, rng: np.random.Generator, contrast: Sequence[float], brightness: Sequence[float],
              gamma: Sequence[float], per_section: bool = False) -> np.ndarray:
    """Gamma, then contrast and brightness, drawn for the whole patch or for each z section.

    Gamma acts on intensities mapped to [0, 1] by the patch's (or section's) range and mapped
    back; then ``raw * contrast + brightness``.

    Args:
        raw: (Z, Y, X) normalised raw.
        rng: the only source of randomness.
        contrast: (low, high) multiplicative factor.
        brightness: (low, high) added offset, in standard deviations.
        gamma: (low, high) exponent, positive.
        per_section: one draw per z section (uneven section staining) instead of one per patch.

    Returns:
        (Z, Y, X) float32.
    """
    _check_raw(raw, "grayscale")
    draws = (raw.shape[0], 1, 1) if per_section else (1, 1, 1)
    out = raw.astype(np.float32)  # a copy
    axes = (1, 2) if per_section else (0, 1, 2)
    low = out.min(axis=axes, keepdims=True)
    span = out.max(axis=axes, keepdims=True) - low
    span[span == 0] = 1  # a constant section stays constant whatever the gamma
    exponent = rng.uniform(*gamma, draws).astype(np.float32)
    out = ((out - low) / span) ** exponent * span + low
    out *= rng.uniform(*contrast, draws).astype(np.float32)
    out += rng.uniform(*brightness, draws).astype(np.float32)
    return out


def random_box(shape: Sequence[int], rng: np.random.Generator, size: Sequence[float],
               axes: Sequence[int] = (0, 1, 2)) -> tuple[slice, slice, slice]:
    """A box inside ``shape`` whose side along each of ``axes`` is a random fraction in ``size``
    of the patch side (the full side along the other axes)."""
    box = []
    for axis, n in enumerate(shape):
        side = max(1, int(round(rng.uniform(*size) * n))) if axis in axes else n
        start = int(rng.integers(0, n - side + 1))
        box.append(slice(start, start + side))
    return tuple(box)


def cut_blur(raw: np.ndarray, rng: np.random.Generator, size: Sequence[float], factor: Sequence[float],
             axes: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """A random box is seen at a lower resolution: downsampled by a factor, upsampled back.

    Teaches the model that resolution varies inside a volume (Yoo et al. 2020 "CutBlur").

    Args:
        raw: (Z, Y, X) normalised raw.
        rng: the only source of randomness.
        size: (low, high) box side as a fraction of the patch side.
        factor: (low, high) downsampling factor, >= 1.
        axes: the axes that lose resolution; (1, 2) keeps z sharp for anisotropic data.

    Returns:
        (Z, Y, X) float32.
    """
    _check_raw(raw, "cut_blur")
    out = raw.astype(np.float32)
    box = random_box(raw.shape, rng, size)
    region = out[box]
    ratio = rng.uniform(*factor)
    small = [max(1, int(round(n / ratio))) if axis in axes else n for axis, n in enumerate(region.shape)]
    # Block averages (a box filter before subsampling) avoid the aliasing of plain subsampling.
    smooth = ndimage.uniform_filter(region, [max(1, int(round(n / s))) for n, s in zip(region.shape, small)],
                                    mode="nearest")
    down = ndimage.zoom(smooth, [s / n for s, n in zip(small, region.shape)], order=1, mode="nearest")
    up = ndimage.zoom(down, [n / s for n, s in zip(region.shape, down.shape)], order=1, mode="nearest")
    out[box] = up  # zoom's output shape is round(in * n / in) = n
    return out


def cut_noise(raw: np.ndarray, rng: np.random.Generator, size: Sequence[float], scale: Sequence[float]) -> np.ndarray:
    """Gaussian noise inside a random box, its standard deviation drawn from ``scale``.

    Args:
        raw: (Z, Y, X) normalised raw.
        rng: the only source of randomness.
        size: (low, high) box side as a fraction of the patch side.
        scale: (low, high) noise standard deviation, in standard deviations of the raw.

    Returns:
        (Z, Y, X) float32.
    """
    _check_raw(raw, "cut_noise")
    out = raw.astype(np.float32)
    box = random_box(raw.shape, rng, size)
    sigma = rng.uniform(*scale)
    out[box] += rng.standard_normal(out[box].shape, dtype=np.float32) * np.float32(sigma)
    return out
