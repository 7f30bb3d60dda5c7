"""Containers: several datasets and group attributes in one HDF5 file or zarr store (outputs).

HDF5 (.h5, .hdf5, .hdf): gzip level 1, chunked; one writing process per file.
Zarr (.zarr): zarr format 3, Blosc zstd with byte shuffle, one file per chunk, so several
processes may write disjoint whole chunks of one array at the same time.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np

from melecole.errors import MelecoleError
from melecole.io.attributes import json_attrs
from melecole.io.formats import detect_format, suffix_format
from melecole.io.units import voxel_size_from
from melecole.io.volume import Volume

DEFAULT_CHUNK = 64
CONTAINER_FORMATS = ("hdf5", "zarr")


def default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """Leading axes whole, each of the last three (z, y, x) ``min(64, size)``; at least 1."""
    lead = len(shape) - min(3, len(shape))
    return tuple(max(1, int(size)) if axis < lead else max(1, min(DEFAULT_CHUNK, int(size)))
                 for axis, size in enumerate(shape))


class Container:
    """Named datasets of one file or store, and the attributes of its root group.

    Attributes:
        path: the file or store.
        format: ``"hdf5"`` or ``"zarr"``.
        mode: ``"r"`` (read) or ``"a"`` (read and write).
    """

    def __init__(self, path: Path, format: str, mode: str):
        self.path = Path(path)
        self.format = format
        self.mode = mode

    def names(self) -> list[str]:
        """The dataset paths, sorted (``group/raw`` for nested ones)."""
        raise NotImplementedError

    def dataset(self, name: str) -> Volume:
        """The dataset ``name`` as a :class:`Volume`, writable when the container is.

        Raises:
            MelecoleError: no such dataset; the message lists the existing ones.
        """
        name = name.strip("/")
        names = self.names()
        if name not in names:
            raise MelecoleError(f"{self.path}: no dataset '{name}' (datasets: {', '.join(names) or 'none'})")
        return self._dataset(name)

    def create_dataset(self, name: str, shape: Sequence[int], dtype, chunks: Sequence[int] | None = None,
                       voxel_size: Sequence[float] | None = None, compression: bool = True,
                       fill_value=0) -> Volume:
        """Creates an empty dataset (every voxel ``fill_value``) and returns it, writable.

        Args:
            name: dataset path; slashes make groups (``predictions/affinities``).
            shape: at least z, y, x; leading axes (channels) first.
            dtype: numpy dtype.
            chunks: storage chunk; default :func:`default_chunks`.
            voxel_size: z, y, x in nanometres, stored as attribute ``voxel_size``.
            compression: HDF5 gzip level 1 / zarr Blosc zstd; False stores raw bytes.
            fill_value: the value of voxels never written.

        Raises:
            TypeError: an object dtype (neither format stores Python objects).
            MelecoleError: read-only container, existing name, fewer than 3 axes, bad chunks.
        """
        self._require_writable()
        name = name.strip("/")
        dtype = np.dtype(dtype)
        if dtype.kind == "O":
            raise TypeError(f"{self.path}: dataset '{name}' has dtype {dtype}; HDF5 and zarr store numbers only")
        shape = tuple(int(size) for size in shape)
        if len(shape) < 3 or min(shape) < 0:
            raise MelecoleError(f"{self.path}: dataset '{name}' needs z, y, x axes, got shape {shape}")
        chunks = default_chunks(shape) if chunks is None else tuple(int(c) for c in chunks)
        if len(chunks) != len(shape) or min(chunks) < 1:
            raise MelecoleError(f"{self.path}: chunks {chunks} do not suit dataset '{name}' of shape {shape}")
        attrs = {}
        if voxel_size is not None:
            if len(voxel_size) != 3:
                raise MelecoleError(f"{self.path}: voxel_size {tuple(voxel_size)} of dataset '{name}' is not z, y, x")
            attrs["voxel_size"] = list(voxel_size_from(voxel_size, f"{self.path}:{name}", "voxel_size"))
        if name in self.names():
            raise MelecoleError(f"{self.path}: already holds dataset '{name}'")
        return self._create(name, shape, dtype, chunks, attrs, compression, fill_value)

    @property
    def attrs(self) -> Mapping:
        """The root group's attributes, read-only; change them with :meth:`set_attrs`."""
        return MappingProxyType(self._read_attrs())

    def set_attrs(self, values: Mapping) -> None:
        """Adds or replaces root attributes; values are str, numbers, bools and lists of them.

        HDF5 stores no dicts or mixed lists; pass ``json.dumps(value)`` for those.
        """
        self._require_writable()
        self._write_attrs(json_attrs(values, str(self.path)))

    def close(self) -> None:
        """Closes the file; volumes taken from the container reopen it on their own."""

    def _require_writable(self) -> None:
        if self.mode == "r":
            raise MelecoleError(f"{self.path}: opened read-only; open it with mode='a' to write")

    def _dataset(self, name: str) -> Volume:
        raise NotImplementedError

    def _create(self, name, shape, dtype, chunks, attrs, compression, fill_value) -> Volume:
        raise NotImplementedError

    def _read_attrs(self) -> dict:
        raise NotImplementedError

    def _write_attrs(self, values: dict) -> None:
        raise NotImplementedError

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, mode={self.mode!r})"


def _container_format(path: Path, format: str | None) -> str:
    found = format or suffix_format(path)
    if found not in CONTAINER_FORMATS:
        raise MelecoleError(f"{path}: a container is an HDF5 file (.h5, .hdf5, .hdf) or a zarr store (.zarr)")
    return found


def _backend(found: str):
    if found == "hdf5":
        from melecole.io.hdf5 import Hdf5Container
        return Hdf5Container
    from melecole.io.zarr_store import ZarrContainer
    return ZarrContainer


def create_container(path: str | Path, overwrite: bool = False, format: str | None = None) -> Container:
    """Creates an empty container, its format from the suffix unless ``format`` says.

    Args:
        path: ``*.h5`` / ``*.hdf5`` / ``*.hdf`` (HDF5) or ``*.zarr`` (zarr v3 store).
        overwrite: replace an existing file or folder at ``path``.
        format: ``"hdf5"`` or ``"zarr"``, for paths without those suffixes (temporary files).

    Raises:
        MelecoleError: unknown format, or ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    found = _container_format(path, format)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise MelecoleError(f"{path}: already exists; pass overwrite=True to replace it")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    return _backend(found).create(path)


def open_container(path: str | Path, mode: str = "r") -> Container:
    """Opens an existing container to read (``"r"``), or to read and write (``"a"``, created if missing).

    Raises:
        MelecoleError: missing path (mode ``"r"``), a TIFF or unknown format, unreadable file.
    """
    if mode not in ("r", "a"):
        raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
    path = Path(path)
    if mode == "a" and not path.exists():
        return create_container(path)
    return _backend(_container_format(path, detect_format(path))).open(path, mode)
