"""One interface to a volume in any format: shape, dtype, voxel size, read(region), write(start, data).

Volumes are z, y, x, optionally after leading axes such as channels (C, Z, Y, X). Regions
and write corners address the last three (spatial) axes; leading axes are always whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np

from melecole.errors import MelecoleError
from melecole.io.formats import detect_format
from melecole.io.region import region_index, write_index
from melecole.io.spec import VolumeSpec
from melecole.io.units import VoxelSize

MODES = ("r", "r+")


def _check_castable(data: np.ndarray, dtype: np.dtype, name: str) -> None:
    """Refuses writes that would silently change values: float into int, integers out of range."""
    if np.can_cast(data.dtype, dtype, "safe"):
        return
    if dtype.kind in "iu" and data.dtype.kind in "iub":
        info = np.iinfo(dtype)
        if data.size == 0 or (int(data.min()) >= info.min and int(data.max()) <= info.max):
            return
        raise MelecoleError(f"{name}: {data.dtype} values {int(data.min())}..{int(data.max())} "
                            f"do not fit the volume's {dtype}")
    if np.can_cast(data.dtype, dtype, "same_kind"):
        return
    raise MelecoleError(f"{name}: cannot write {data.dtype} data into a {dtype} volume without changing values")


class Volume:
    """A volume of one file, store or TIFF stack, read and written region by region.

    Attributes:
        name: the address, for messages (``vol.h5:raw``, ``vol.zarr/raw``, ``stack.tif``).
        shape: the full shape, leading axes first (``(C, Z, Y, X)`` or ``(Z, Y, X)``).
        dtype: the stored numpy dtype.
        chunks: the storage chunk (for zarr the shard when sharded: the unit of safe parallel
            writes), or None when stored contiguously.
        voxel_size: z, y, x in nanometres (see the README), or None when the file says nothing.
        attrs: the dataset's attributes, read-only (plain JSON types).
        writable: whether :meth:`write` is allowed (opened with mode ``"r+"``).
    """

    _transient: tuple[str, ...] = ()  # handles dropped when pickled, reopened on use

    def __init__(self, *, name: str, shape: Sequence[int], dtype, chunks: Sequence[int] | None,
                 voxel_size: VoxelSize | None, attrs: Mapping, writable: bool):
        self.name = name
        self.shape = tuple(int(size) for size in shape)
        self.dtype = np.dtype(dtype)
        self.chunks = tuple(int(c) for c in chunks) if chunks else None
        self.voxel_size = voxel_size
        self.attrs = MappingProxyType(dict(attrs))
        self.writable = writable

    @property
    def ndim(self) -> int:
        """The number of axes, leading ones included."""
        return len(self.shape)

    def read(self, region: Sequence[slice] | None = None) -> np.ndarray:
        """Reads ``region`` (3 slices over z, y, x; None for all) with leading axes whole.

        Returns:
            A new array of shape ``shape[:-3] + region extents``.

        Raises:
            MelecoleError: the region is not 3 step-less slices inside the shape, or the
                stored data cannot be decoded.
        """
        return self._read(region_index(region, self.shape, self.name))

    def write(self, start: Sequence[int], data) -> None:
        """Writes ``data`` (leading axes whole) with its z, y, x corner at ``start``.

        Zarr: several processes may write at once when their blocks cover disjoint whole
        chunks (:attr:`chunks`); blocks sharing a chunk race. HDF5: one writing process
        per file.

        Raises:
            MelecoleError: read-only volume, data that does not fit, or a dtype that would
                change values (float into integers, integers out of range).
        """
        if not self.writable:
            raise MelecoleError(f"{self.name}: opened read-only; open it with mode='r+' to write")
        data = np.asarray(data)
        index = write_index(start, data.shape, self.shape, self.name)
        _check_castable(data, self.dtype, self.name)
        self._write(index, data)

    def close(self) -> None:
        """Releases file handles; reading again reopens them."""

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        raise NotImplementedError

    def _write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        raise MelecoleError(f"{self.name}: this format is read-only")

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__, attrs=dict(self.attrs))
        state.update({key: None for key in self._transient})
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, attrs=MappingProxyType(state["attrs"]))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, shape={self.shape}, dtype={self.dtype}, "
                f"chunks={self.chunks}, voxel_size={self.voxel_size})")


def as_spec(spec: VolumeSpec | str | Path) -> VolumeSpec:
    """A :class:`VolumeSpec` from an address text, a path or a spec."""
    return spec if isinstance(spec, VolumeSpec) else VolumeSpec.parse(str(spec))


def open_volume(spec: VolumeSpec | str | Path, ndim: int | None = None, mode: str = "r") -> Volume:
    """Opens one volume lazily, whatever its format; nothing is read until :meth:`Volume.read`.

    Args:
        spec: an address (``vol.h5:raw``, ``vol.zarr/raw``, ``vol.zarr``, ``stack.tif``, a
            folder of TIFF sections) or a :class:`VolumeSpec`.
        ndim: required number of axes (3 for z, y, x; 4 for channels first); None accepts any.
        mode: ``"r"`` to read, ``"r+"`` to read and write (HDF5 and zarr only).

    Raises:
        MelecoleError: missing or unsupported path, missing dataset (the message lists the
            existing ones), unreadable file, wrong number of axes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    spec = as_spec(spec)
    found = detect_format(spec.path)
    if found == "hdf5":
        from melecole.io.hdf5 import open_hdf5 as opener
    elif found == "zarr":
        from melecole.io.zarr_store import open_zarr as opener
    else:
        from melecole.io.tiff import open_tiff as opener
    volume = opener(spec, mode)
    if ndim is not None and volume.ndim != ndim:
        volume.close()
        raise MelecoleError(f"{volume.name}: expected {ndim} dimensions, found shape {volume.shape}")
    return volume
