"""Section defects of serial EM: missing sections and parts, motion blur, misalignment.

Defects act on z sections, the cutting (or milling) direction. Missing sections, missing parts
and motion blur change raw only: the ground truth still describes the tissue, so the model
must learn to bridge the defect. Misalignment moves raw and labels together, as in a
misaligned stack whose labels were drawn on the misaligned image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from melecole.data.augment.geometric import warp


def _check_raw(raw: np.ndarray, what: str) -> None:
    if raw.ndim != 3:
        raise ValueError(f"{what}: raw {raw.shape} must be (z, y, x)")


def _pick_sections(depth: int, rng: np.random.Generator, count: Sequence[int]) -> np.ndarray:
    # Interior sections when there are any, so the model can see both sides of a defect.
    candidates = np.arange(1, depth - 1) if depth > 2 else np.arange(depth)
    wanted = int(rng.integers(count[0], count[1] + 1))
    return np.sort(rng.choice(candidates, size=min(wanted, len(candidates)), replace=False))


def missing_section(raw: np.ndarray, rng: np.random.Generator, sections: Sequence[int],
                    value: float = 0.0) -> np.ndarray:
    """Replaces a few whole z sections by a constant.

    Args:
        raw: (Z, Y, X) normalised raw.
        rng: the only source of randomness.
        sections: (low, high) number of sections blanked (interior ones when Z > 2).
        value: fill value (0 is the volume's mean after normalisation).

    Returns:
        (Z, Y, X) float32.
    """
    _check_raw(raw, "missing_section")
    out = raw.astype(np.float32)
    out[_pick_sections(raw.shape[0], rng, sections)] = value
    return out


def missing_parts(raw: np.ndarray, rng: np.random.Generator, sections: Sequence[int], radius: Sequence[float],
                  value: float = 0.0) -> np.ndarray:
    """Blanks a randomly placed, rotated ellipse in a few z sections.

    Args:
        raw: (Z, Y, X) normalised raw.
        rng: the only source of randomness.
        sections: (low, high) number of sections with a hole.
        radius: (low, high) semi-axes as fractions of the section's (Y, X) size.
        value: fill value.

    Returns:
        (Z, Y, X) float32.
    """
    _check_raw(raw, "missing_parts")
    out = raw.astype(np.float32)
    _, height, width = raw.shape
    y, x = np.mgrid[:height, :width]
    for section in _pick_sections(raw.shape[0], rng, sections):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry = max(1.0, rng.uniform(*radius) * height)
        rx = max(1.0, rng.uniform(*radius) * width)
        angle = rng.uniform(0, np.pi)
        along = (y - cy) * np.cos(angle) + (x - cx) * np.sin(angle)
        across = -(y - cy) * np.sin(angle) + (x - cx) * np.cos(angle)
        out[section][(along / ry) ** 2 + (across / rx) ** 2 <= 1] = value
    return out


def line_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised (L, L) kernel along a line of ``length`` voxels at ``angle`` (radians, from +x)."""
    size = int(length) | 1  # odd, so the kernel has a centre voxel and blurring does not shift
    centre = size // 2
    kernel = np.zeros((size, size), np.float32)
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, 2 * size):
        kernel[int(round(centre - t * np.sin(angle))), int(round(centre + t * np.cos(angle)))] = 1
    return kernel / kernel.sum()


def motion_blur(raw: np.ndarray, rng: np.random.Generator, sections: Sequence[int],
                length: Sequence[int]) -> np.ndarray:
    """Blurs a few z sections along a line at a random in-plane angle (a stage or beam moving).

    Args:
        raw: (Z, Y, X) normalised raw.
        rng: the only source of randomness.
        sections: (low, high) number of sections blurred.
        length: (low, high) kernel length in voxels.

    Returns:
        (Z, Y, X) float32.
    """
    _check_raw(raw, "motion_blur")
    out = raw.astype(np.float32)
    for section in _pick_sections(raw.shape[0], rng, sections):
        kernel = line_kernel(int(rng.integers(length[0], length[1] + 1)), rng.uniform(0, np.pi))
        out[section] = ndimage.convolve(out[section], kernel, mode="reflect")
    return out


def misalignment_shifts(depth: int, rng: np.random.Generator, max_shift: int, slip: float) -> np.ndarray:
    """Per-section (y, x) shifts of one misalignment event.

    With probability ``slip`` one section is shifted alone (a slip); otherwise every section
    from a random one on is shifted (a translation, the stack misregistered at one cut).

    Args:
        depth: number of z sections Z.
        rng: the only source of randomness.
        max_shift: the largest shift along y and x; the drawn shift is never (0, 0).
        slip: probability of a slip rather than a translation.

    Returns:
        (Z, 2) int64 shifts.
    """
    shifts = np.zeros((depth, 2), np.int64)
    shift = np.zeros(2, np.int64)
    while not shift.any():
        shift = rng.integers(-max_shift, max_shift + 1, 2)
    if rng.random() < slip:
        shifts[int(rng.integers(1, depth - 1)) if depth > 2 else 0] = shift
    else:
        shifts[int(rng.integers(1, depth)) if depth > 1 else 0:] = shift
    return shifts


def misalign(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, shape: Sequence[int],
             max_shift: int, slip: float) -> tuple[np.ndarray, np.ndarray]:
    """Cuts a ``shape`` patch from a region's centre with misaligned sections (raw and labels).

    The region needs ``max_shift`` spare voxels on every side in y and x; with less, shifts are
    clipped to what the region holds (see :func:`~melecole.data.augment.geometric.warp`).

    Returns:
        raw (Z, Y, X) float32, labels (Z, Y, X) of the labels' dtype.
    """
    return warp(raw, labels, shape, shifts=misalignment_shifts(int(shape[0]), rng, max_shift, slip))
