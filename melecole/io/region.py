"""Regions over the last three (z, y, x) axes of a volume, checked against its shape."""

from __future__ import annotations

import operator
from collections.abc import Sequence

from melecole.errors import MelecoleError

Region = tuple[slice, slice, slice]


def describe_region(region: Sequence[slice]) -> str:
    """``(0:4, 0:8, 2:10)``: a region as users write it, for messages."""
    def bound(value) -> str:
        return "" if value is None else str(value)
    return "(" + ", ".join(f"{bound(s.start)}:{bound(s.stop)}" for s in region) + ")"


def _as_int(value, name: str, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise MelecoleError(f"{name}: {what} must be integers, got {value!r}") from None


def region_index(region: Sequence[slice] | None, shape: tuple[int, ...], name: str) -> tuple[slice, ...]:
    """The full index of ``region``: leading axes whole, then the z, y, x slices made explicit.

    Args:
        region: three slices over the last three axes (``None`` start/stop mean the edges),
            or ``None`` for the whole volume.
        shape: the volume's shape, leading axes first.
        name: the volume's name, for messages.

    Raises:
        MelecoleError: not three step-less slices, or a slice outside ``shape``.
    """
    if region is None:
        return tuple(slice(0, size) for size in shape)
    if len(shape) < 3:
        raise MelecoleError(f"{name}: a region needs z, y, x axes, found shape {shape}")
    if not isinstance(region, (tuple, list)) or len(region) != 3 or not all(isinstance(s, slice) for s in region):
        raise MelecoleError(f"{name}: a region is 3 slices (z, y, x), got {region!r}")
    spatial = []
    for part, size in zip(region, shape[-3:]):
        if part.step not in (None, 1):
            raise MelecoleError(f"{name}: region {describe_region(region)} has a step; regions are contiguous")
        start = 0 if part.start is None else _as_int(part.start, name, "region bounds")
        stop = size if part.stop is None else _as_int(part.stop, name, "region bounds")
        if start > stop:
            raise MelecoleError(f"{name}: region {describe_region(region)} runs backwards")
        if start < 0 or stop > size:
            raise MelecoleError(f"{name}: region {describe_region(region)} is outside shape {shape}")
        spatial.append(slice(start, stop))
    return tuple(slice(0, size) for size in shape[:-3]) + tuple(spatial)


def write_index(start: Sequence[int], data_shape: tuple[int, ...], shape: tuple[int, ...],
                name: str) -> tuple[slice, ...]:
    """The full index where data of ``data_shape`` goes when its z, y, x corner is ``start``.

    Raises:
        MelecoleError: leading axes that differ from the volume's, or data reaching outside it.
    """
    if len(shape) < 3 or len(data_shape) != len(shape) or tuple(data_shape[:-3]) != tuple(shape[:-3]):
        raise MelecoleError(f"{name}: data of shape {data_shape} does not fit a volume of shape {shape} "
                            "(same number of axes, leading axes whole)")
    if len(start) != 3:
        raise MelecoleError(f"{name}: start is a z, y, x corner, got {tuple(start)}")
    corner = tuple(_as_int(value, name, "start coordinates") for value in start)
    stop = tuple(a + n for a, n in zip(corner, data_shape[-3:]))
    if any(a < 0 for a in corner) or any(b > size for b, size in zip(stop, shape[-3:])):
        raise MelecoleError(f"{name}: data of shape {data_shape} at start {corner} is outside shape {shape}")
    return tuple(slice(0, size) for size in shape[:-3]) + tuple(slice(a, b) for a, b in zip(corner, stop))
