"""Geometric augmentations, applied jointly to raw and labels (pure numpy, inputs never changed).

Orientation changes (flips, transposes, in-plane 90 degree rotations) are exact index maps and
return views. Everything else (rescale, elastic warping, section misalignment) is one resampling
of a region read larger than the patch: :func:`warp` samples the patch from the region's centre
and never reads outside the region, so no padded voxel reaches the model. Raw is interpolated
linearly; labels are taken from the nearest voxel, so no label id is ever invented.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Triple = tuple[int, int, int]

_ALL_ORDERS: tuple[Triple, ...] = tuple(itertools.permutations(range(3)))
_PLANE_ORDERS: tuple[Triple, ...] = ((0, 1, 2), (0, 2, 1))


def _check_pair(raw: np.ndarray, labels: np.ndarray, what: str) -> None:
    if raw.ndim != 3 or raw.shape != labels.shape:
        raise ValueError(f"{what}: raw {raw.shape} and labels {labels.shape} must be one (z, y, x) shape")


def axis_orders(anisotropic: bool) -> tuple[Triple, ...]:
    """The axis permutations allowed: all six, or only the (y, x) swap when z is anisotropic."""
    return _PLANE_ORDERS if anisotropic else _ALL_ORDERS


def fitting_orders(region: Sequence[int], patch: Sequence[int], orders: Sequence[Triple]) -> list[Triple]:
    """The orders ``perm`` for which the transposed region, ``region[perm]``, holds ``patch``."""
    return [perm for perm in orders if all(region[a] >= p for a, p in zip(perm, patch))]


def transpose(raw: np.ndarray, labels: np.ndarray, perm: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Output axis ``i`` is input axis ``perm[i]`` (views)."""
    _check_pair(raw, labels, "transpose")
    if sorted(perm) != [0, 1, 2]:
        raise ValueError(f"transpose: {tuple(perm)} is not a permutation of (0, 1, 2)")
    return np.transpose(raw, perm), np.transpose(labels, perm)


def flip(raw: np.ndarray, labels: np.ndarray, axes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Reverses the given axes (views)."""
    _check_pair(raw, labels, "flip")
    axes = tuple(axes)
    if not axes:
        return raw, labels
    return np.flip(raw, axes), np.flip(labels, axes)


def rotate90(raw: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotates by ``k`` quarter turns in the (y, x) plane (views); odd ``k`` swaps y and x sizes."""
    _check_pair(raw, labels, "rotate90")
    return np.rot90(raw, k, axes=(1, 2)), np.rot90(labels, k, axes=(1, 2))


def elastic_displacement(shape: Sequence[int], rng: np.random.Generator, magnitude: float, spacing: int,
                         axes: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """A smooth random displacement field, at most ``magnitude`` voxels along any axis.

    Control points about ``spacing`` voxels apart draw uniform displacements in
    ``[-magnitude, magnitude]``; a cubic B-spline smooths them into a field that stays within
    that range and whose slope is at most ``2 * magnitude / spacing``, so the warp cannot fold
    while ``2 * magnitude < spacing``.

    Args:
        shape: (Z, Y, X) of the output patch.
        rng: the only source of randomness.
        magnitude: the largest displacement, voxels.
        spacing: control point spacing, voxels (larger = smoother).
        axes: the axes that are displaced; (1, 2) keeps every voxel in its z section.

    Returns:
        (3, Z, Y, X) float64 displacements; zero along the axes not listed.
    """
    shape = tuple(int(s) for s in shape)
    field = np.zeros((3, *shape))  # (3, Z, Y, X)
    control = tuple(max(2, -(-n // spacing) + 1) for n in shape)
    # The control grid spans the patch; a tensor-product spline is three small matrix products,
    # far cheaper than interpolating every voxel in 3-D.
    weights = [_spline_weights(c, n) for c, n in zip(control, shape)]  # each (n, c)
    for axis in axes:
        coarse = rng.uniform(-magnitude, magnitude, control)  # (cz, cy, cx)
        field[axis] = np.einsum("abc,za,yb,xc->zyx", coarse, *weights, optimize=True)
    return field


def _spline_weights(control: int, size: int) -> np.ndarray:
    # (size, control): row i holds the cubic B-spline weights of the control values at output
    # voxel i. B-spline weights are non-negative and each row sums to 1 (renormalised at the
    # ends, where control points are missing), so the field stays within the control values and
    # its slope within their largest difference per spacing: no overshoot, no folding.
    where = np.linspace(0, control - 1, size)[:, None] - np.arange(control)[None, :]
    u = np.abs(where)
    weights = np.where(u < 1, 2 / 3 - u**2 + u**3 / 2, np.where(u < 2, (2 - u) ** 3 / 6, 0.0))
    return weights / weights.sum(axis=1, keepdims=True)


def warp(raw: np.ndarray, labels: np.ndarray, shape: Sequence[int], zoom: Sequence[float] = (1.0, 1.0, 1.0),
         displacement: np.ndarray | None = None,
         shifts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Samples a ``shape`` patch from the centre of a larger region, transformed.

    Output voxel ``g`` reads the region at ``centre + (g - c) / zoom + displacement[:, g] +
    shift[g_z]``, where ``c`` is the patch centre and ``centre`` the matching point of the region
    (an integer crop when nothing else applies). Along an axis where that would leave the
    region, the deviation from the centre is shrunk until it fits: the volume's own voxels are
    the only ones ever read.

    Args:
        raw: (Z', Y', X') region, Z' >= Z etc.
        labels: (Z', Y', X') integer labels of the region.
        shape: (Z, Y, X) of the output.
        zoom: per-axis magnification (> 1 enlarges the content).
        displacement: optional (3, Z, Y, X) displacement in region voxels.
        shifts: optional (Z, 2) integer (y, x) shift of each output section.

    Returns:
        raw (Z, Y, X) float32, linearly interpolated; labels (Z, Y, X), same dtype, nearest voxel.

    Raises:
        ValueError: when the region is smaller than ``shape`` or the arrays do not match.
    """
    _check_pair(raw, labels, "warp")
    shape = tuple(int(s) for s in shape)
    region = np.array(raw.shape)
    out = np.array(shape)
    if (region < out).any():
        raise ValueError(f"warp: region {raw.shape} is smaller than the patch {shape}")
    if displacement is not None and displacement.shape != (3, *shape):
        raise ValueError(f"warp: displacement {displacement.shape} must be {(3, *shape)}")
    if shifts is not None and shifts.shape != (shape[0], 2):
        raise ValueError(f"warp: shifts {shifts.shape} must be {(shape[0], 2)}")
    corner = (region - out) // 2
    zoom = np.asarray(zoom, dtype=np.float64)
    if displacement is None and (zoom == 1).all():
        return _shifted_crop(raw, labels, shape, corner, shifts)
    centre = corner + (out - 1) / 2
    room = np.minimum(centre, region - 1 - centre)
    coords = np.empty((3, *shape))  # (3, Z, Y, X) region coordinates
    for axis in range(3):
        steps = (np.arange(shape[axis]) - (shape[axis] - 1) / 2) / zoom[axis]
        deviation = np.broadcast_to(steps.reshape([-1 if a == axis else 1 for a in range(3)]), shape).copy()
        if displacement is not None:
            deviation += displacement[axis]
        if shifts is not None and axis > 0:
            deviation += shifts[:, axis - 1, None, None]
        extent = np.abs(deviation).max()
        if extent > room[axis]:
            deviation *= room[axis] / extent
        coords[axis] = centre[axis] + deviation
    raw_out = ndimage.map_coordinates(raw, coords, order=1, mode="nearest", output=np.float32, prefilter=False)
    # Nearest neighbour by index, not by interpolating ids: exact for any uint64 id.
    nearest = np.floor(coords + 0.5).astype(np.intp)
    for axis in range(3):
        np.clip(nearest[axis], 0, region[axis] - 1, out=nearest[axis])
    return raw_out, labels[nearest[0], nearest[1], nearest[2]]


def _shifted_crop(raw: np.ndarray, labels: np.ndarray, shape: Triple, corner: np.ndarray,
                  shifts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    # Integer transforms only: plain slicing, no interpolation.
    z, y, x = (int(c) for c in corner)
    if shifts is None or not shifts.any():
        box = (slice(z, z + shape[0]), slice(y, y + shape[1]), slice(x, x + shape[2]))
        return np.array(raw[box], dtype=np.float32, order="C"), np.array(labels[box], order="C")
    margin = np.array([[y, raw.shape[1] - shape[1] - y], [x, raw.shape[2] - shape[2] - x]])
    raw_out = np.empty(shape, np.float32)
    labels_out = np.empty(shape, labels.dtype)
    for section in range(shape[0]):
        dy, dx = (int(np.clip(s, -low, high)) for s, (low, high) in zip(shifts[section], margin))
        box = (z + section, slice(y + dy, y + dy + shape[1]), slice(x + dx, x + dx + shape[2]))
        raw_out[section] = raw[box]
        labels_out[section] = labels[box]
    return raw_out, labels_out


def flip_transpose(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, shape: Sequence[int],
                   flip_axes: bool = True, transpose_axes: bool = True,
                   anisotropic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A random axis order (among those whose region still holds ``shape``) and random flips.

    Args:
        raw: (Z', Y', X') region.
        labels: (Z', Y', X') labels of the region.
        rng: the only source of randomness.
        shape: the (Z, Y, X) patch that will be cut from the result.
        flip_axes: flip each axis with probability 1/2.
        transpose_axes: draw an axis order; with ``anisotropic`` only y and x may swap.
        anisotropic: z has another resolution than y and x and must stay z.

    Returns:
        raw and labels views.

    Raises:
        ValueError: when no allowed axis order of the region holds ``shape``.
    """
    if transpose_axes:
        orders = fitting_orders(raw.shape, shape, axis_orders(anisotropic))
        if not orders:
            raise ValueError(f"flip_transpose: no allowed axis order of region {raw.shape} holds patch {tuple(shape)}")
        raw, labels = transpose(raw, labels, orders[int(rng.integers(len(orders)))])
    if flip_axes:
        raw, labels = flip(raw, labels, [axis for axis in range(3) if rng.random() < 0.5])
    return raw, labels


def random_rotate90(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                    shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """1, 2 or 3 quarter turns in the (y, x) plane; a half turn when a quarter turn would leave
    the region too small for ``shape`` (views)."""
    k = int(rng.integers(1, 4))
    if k % 2 and (raw.shape[1] < shape[2] or raw.shape[2] < shape[1]):
        k = 2
    return rotate90(raw, labels, k)


def draw_zoom(rng: np.random.Generator, zoom_z: Sequence[float],
              zoom_xy: Sequence[float]) -> tuple[float, float, float]:
    """(z, y, x) magnifications: z and the (y, x) plane drawn separately, y and x alike."""
    in_plane = float(rng.uniform(*zoom_xy))
    return float(rng.uniform(*zoom_z)), in_plane, in_plane


def rescale(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, shape: Sequence[int],
            zoom_z: Sequence[float], zoom_xy: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Zooms the region's centre into a ``shape`` patch, z and (y, x) by separate random factors.

    Changing the z zoom against the in-plane one changes the apparent anisotropy. Zooming out
    (factor < 1) needs a region ``1 / factor`` times the patch; see :func:`warp`.
    """
    return warp(raw, labels, shape, zoom=draw_zoom(rng, zoom_z, zoom_xy))


def elastic(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, shape: Sequence[int],
            magnitude: float, spacing: int, axes: Sequence[int] = (0, 1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """Elastic warp of the region's centre into a ``shape`` patch (see :func:`elastic_displacement`).

    The region needs ``ceil(magnitude)`` spare voxels on every side along ``axes``.
    """
    field = elastic_displacement(shape, rng, magnitude, spacing, axes)
    return warp(raw, labels, shape, displacement=field)
