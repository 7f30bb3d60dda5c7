"""Whole volumes in memory: reading with checks, writing several arrays into one file atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from melecole.errors import MelecoleError
from melecole.io.atomic import atomic_directory, atomic_output
from melecole.io.container import create_container
from melecole.io.formats import ZARR_SUFFIXES
from melecole.io.spec import DEFAULT_DATASET, VolumeSpec
from melecole.io.volume import open_volume

__all__ = ["DEFAULT_DATASET", "VolumeSpec", "check_same_shape", "read_volume", "read_volumes", "write_volumes"]


def read_volume(spec: VolumeSpec | str, ndim: int = 3) -> np.ndarray:
    """Reads one volume of any format (HDF5, zarr, TIFF) fully into memory, checking its axes.

    Args:
        spec: the volume address, a :class:`VolumeSpec` or text such as ``FILE[:dataset]``,
            ``STORE.zarr[/array]``, ``stack.tif`` or a folder of TIFF sections.
        ndim: required number of dimensions (3 for z, y, x; 4 for channels first).

    Raises:
        MelecoleError: missing or corrupt file, missing dataset, wrong dimensionality.
    """
    with open_volume(spec, ndim=ndim) as volume:
        return volume.read()


def read_volumes(path: str | Path, names: dict[str, int]) -> dict[str, np.ndarray]:
    """Reads several datasets of one file, ``names`` mapping dataset name to required ndim."""
    return {name: read_volume(VolumeSpec(Path(path), name), ndim) for name, ndim in names.items()}


def check_same_shape(path: str | Path, volumes: dict[str, np.ndarray], spatial_only: bool = True) -> None:
    """Raises a clear error when the z, y, x extents of the named arrays differ."""
    shapes = {name: array.shape[-3:] if spatial_only else array.shape for name, array in volumes.items()}
    if len(set(shapes.values())) > 1:
        described = " and ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise MelecoleError(f"{path}: {described} differ in shape")


def write_volumes(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict | None = None,
                  voxel_size: tuple[float, float, float] | None = None) -> None:
    """Writes arrays as chunked, compressed datasets of a new file or store, atomically.

    A ``.zarr`` path becomes a zarr v3 store (Blosc zstd), any other an HDF5 file (gzip
    level 1); chunks are :func:`~melecole.io.container.default_chunks`. The output appears
    only once complete, replacing any previous one; after an exception nothing is left.

    Args:
        path: the output file or store.
        arrays: dataset name -> array of at least 3 axes (z, y, x last).
        attrs: root attributes (str, numbers, bools, flat lists).
        voxel_size: z, y, x in nanometres, stored as each dataset's ``voxel_size``.
    """
    path = Path(path)
    found = "zarr" if path.suffix.lower() in ZARR_SUFFIXES else "hdf5"
    atomic = atomic_directory if found == "zarr" else atomic_output
    with atomic(path) as tmp, create_container(tmp, overwrite=True, format=found) as container:
        for name, array in arrays.items():
            array = np.asarray(array)
            volume = container.create_dataset(name, array.shape, array.dtype, voxel_size=voxel_size)
            volume.write((0, 0, 0), array)
        if attrs:
            container.set_attrs(attrs)
