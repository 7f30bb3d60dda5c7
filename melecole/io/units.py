"""Voxel sizes in nanometres: parsing stored values and converting named length units."""

from __future__ import annotations

import math

from melecole.errors import MelecoleError
from melecole.io.attributes import to_plain

VoxelSize = tuple[float, float, float]

# Names used by OME-Zarr (UDUNITS-2) and by ImageJ / Fiji for lengths, in nanometres.
NM_PER_UNIT = {
    "angstrom": 0.1, "picometer": 1e-3, "nanometer": 1.0, "nm": 1.0,
    "micrometer": 1e3, "micron": 1e3, "microns": 1e3, "um": 1e3, "\u00b5m": 1e3, "\u03bcm": 1e3, "\\u00b5m": 1e3,
    "millimeter": 1e6, "mm": 1e6, "centimeter": 1e7, "cm": 1e7, "meter": 1e9, "m": 1e9,
}


def nm_per_unit(unit) -> float | None:
    """Nanometres per ``unit`` (``"micrometer"``, ``"micron"``, ``"nm"``, ...); None when unknown."""
    return NM_PER_UNIT.get(unit.strip().lower()) if isinstance(unit, str) else None


def voxel_size_from(value, name: str, source: str, units=(None, None, None), factor: float = 1.0) -> VoxelSize:
    """The last three entries of ``value`` as a positive z, y, x voxel size in nanometres.

    Args:
        value: stored numbers (list, tuple or array), channels first if there are more than 3.
        name: the volume's name, for messages.
        source: where the numbers come from (``attribute resolution``), for messages.
        units: the unit name of each of the three axes; known ones are converted to nm,
            unknown or missing ones leave the number as stored.
        factor: a multiplier applied to every axis first (1000 for ``element_size_um``).

    Raises:
        MelecoleError: fewer than three numbers, or a non-positive or non-finite one.
    """
    plain = to_plain(value)
    try:
        numbers = [float(item) for item in plain]
    except (TypeError, ValueError):
        raise MelecoleError(f"{name}: {source} {plain!r} is not a list of numbers (z, y, x)") from None
    if len(numbers) < 3 or not all(math.isfinite(n) and n > 0 for n in numbers[-3:]):
        raise MelecoleError(f"{name}: {source} {plain!r} is not three positive numbers (z, y, x)")
    scaled = []
    for number, unit in zip(numbers[-3:], units):
        per_unit = nm_per_unit(unit)
        scaled.append(float(f"{number * factor * (per_unit or 1.0):.12g}"))
    return (scaled[0], scaled[1], scaled[2])


def attribute_voxel_size(attrs, name: str) -> VoxelSize | None:
    """Voxel size from dataset attributes: ``voxel_size``, ``resolution`` (CREMI), ``element_size_um``.

    ``voxel_size`` and ``resolution`` are taken as nanometres, ``element_size_um`` is converted.
    """
    for key, factor in (("voxel_size", 1.0), ("resolution", 1.0), ("element_size_um", 1000.0)):
        if key in attrs:
            return voxel_size_from(attrs[key], name, f"attribute {key}", factor=factor)
    return None
