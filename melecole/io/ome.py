"""OME-Zarr (NGFF v0.4 and v0.5) multiscales metadata: the levels of an image and their scale."""

from __future__ import annotations

from collections.abc import Mapping

from melecole.errors import MelecoleError
from melecole.io.units import VoxelSize, voxel_size_from


def multiscales(attrs: Mapping) -> list:
    """The multiscales list of a group: ``attrs["ome"]["multiscales"]`` (v0.5) or ``attrs["multiscales"]``."""
    ome = attrs.get("ome")
    found = ome.get("multiscales") if isinstance(ome, Mapping) else None
    if found is None:
        found = attrs.get("multiscales")
    return found if isinstance(found, list) else []


def first_level(attrs: Mapping) -> str | None:
    """The path of the first (highest-resolution) dataset of the first multiscale, if any."""
    for entry in multiscales(attrs):
        datasets = entry.get("datasets") if isinstance(entry, Mapping) else None
        if datasets and isinstance(datasets[0], Mapping) and "path" in datasets[0]:
            return str(datasets[0]["path"]).strip("/")
    return None


def _scale(transformations, name: str) -> list[float] | None:
    """The product of the ``scale`` transformations of a list (translations do not change size)."""
    scale = None
    for transformation in transformations or []:
        if not isinstance(transformation, Mapping) or transformation.get("type") != "scale":
            continue
        if "scale" not in transformation:
            raise MelecoleError(f"{name}: OME-Zarr scale stored outside the metadata "
                                f"({transformation.get('path')}) is not supported")
        values = [float(v) for v in transformation["scale"]]
        if scale is not None and len(values) != len(scale):
            raise MelecoleError(f"{name}: OME-Zarr scales {scale} and {values} differ in length")
        scale = values if scale is None else [a * b for a, b in zip(scale, values)]
    return scale


def _units(axes, count: int) -> tuple:
    """The unit of each of the last three axes; v0.3 axes (plain names) have none."""
    units = [axis.get("unit") if isinstance(axis, Mapping) else None for axis in axes or []]
    return tuple(units[-3:]) if len(units) == count else (None, None, None)


def level_voxel_size(attrs: Mapping, level: str, name: str) -> VoxelSize | None:
    """The z, y, x voxel size (nm when the axes name a unit) of dataset ``level`` of a group.

    The dataset's ``scale`` transformation is multiplied by the multiscale's global one, if any;
    the last three entries are the spatial z, y, x.

    Returns:
        None when no multiscale of ``attrs`` lists ``level`` or it has no scale.

    Raises:
        MelecoleError: malformed scales.
    """
    for entry in multiscales(attrs):
        if not isinstance(entry, Mapping):
            continue
        for dataset in entry.get("datasets") or []:
            if not isinstance(dataset, Mapping) or str(dataset.get("path", "")).strip("/") != level:
                continue
            try:
                own = _scale(dataset.get("coordinateTransformations"), name)
                common = _scale(entry.get("coordinateTransformations"), name)
            except (TypeError, ValueError):
                raise MelecoleError(f"{name}: OME-Zarr coordinateTransformations of '{level}' "
                                    "hold a scale that is not a list of numbers") from None
            if own is None and common is None:
                return None
            if own is not None and common is not None:
                if len(own) != len(common):
                    raise MelecoleError(f"{name}: OME-Zarr scale {own} and global scale {common} differ in length")
                own = [a * b for a, b in zip(own, common)]
            scale = own if own is not None else common
            return voxel_size_from(scale, name, "OME-Zarr scale", _units(entry.get("axes"), len(scale)))
    return None
