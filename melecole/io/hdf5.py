"""HDF5 volumes and containers (h5py). One writing process per file: HDF5 has no parallel writes here."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from melecole.errors import MelecoleError
from melecole.io.attributes import plain_attrs
from melecole.io.container import Container
from melecole.io.spec import DEFAULT_DATASET, VolumeSpec
from melecole.io.units import attribute_voxel_size
from melecole.io.volume import Volume

# A chunk cache that holds a few default chunks (64^3 float32 is 1 MiB per channel).
CHUNK_CACHE_BYTES = 32 * 1024 * 1024


def open_file(path: Path, mode: str) -> h5py.File:
    """``h5py.File`` with a clear error for files HDF5 cannot open."""
    try:
        return h5py.File(path, mode, rdcc_nbytes=CHUNK_CACHE_BYTES)
    except OSError as error:
        raise MelecoleError(f"{path}: not a readable HDF5 file ({error})") from None


def dataset_names(handle: h5py.Group) -> list[str]:
    """Every dataset path below ``handle``, sorted (``volumes/raw``)."""
    names: list[str] = []
    handle.visititems(lambda name, node: names.append(name) if isinstance(node, h5py.Dataset) else None)
    return sorted(names)


def default_dataset(handle: h5py.File, path: Path) -> str:
    """The file's only top-level dataset, else the one named ``stack``."""
    names = [name for name, node in handle.items() if isinstance(node, h5py.Dataset)]
    if len(names) == 1:
        return names[0]
    if DEFAULT_DATASET in names:
        return DEFAULT_DATASET
    raise MelecoleError(
        f"{path}: holds datasets {', '.join(sorted(names)) or 'none'}; name one as {path}:DATASET"
    )


class Hdf5Volume(Volume):
    """One HDF5 dataset; the file is opened on first use and closed by :meth:`close`."""

    _transient = ("_shared", "_own")

    def __init__(self, path: Path, dataset: str, mode: str, own: h5py.File | None = None,
                 shared: h5py.File | None = None):
        self.path, self.dataset, self.mode = Path(path), dataset, mode
        self._own, self._shared = own, shared
        node = self._node()
        name = f"{path}:{dataset}"
        super().__init__(name=name, shape=node.shape, dtype=node.dtype, chunks=node.chunks,
                         voxel_size=attribute_voxel_size(node.attrs, name), attrs=plain_attrs(node.attrs),
                         writable=mode != "r")

    def _node(self) -> h5py.Dataset:
        if self._shared:  # a container's open file; falsy once the container closed it
            return self._shared[self.dataset]
        if not self._own:
            self._own = open_file(self.path, self.mode)
        return self._own[self.dataset]

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            return self._node()[index]
        except OSError as error:
            raise MelecoleError(f"{self.name}: cannot read the data ({error})") from None

    def _write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        self._node()[index] = data

    def close(self) -> None:
        if self._own:
            self._own.close()
        self._own = self._shared = None


def open_hdf5(spec: VolumeSpec, mode: str) -> Hdf5Volume:
    """The dataset ``spec`` names (or the file's default one) as a volume."""
    handle = open_file(spec.path, mode)
    try:
        dataset = spec.dataset or default_dataset(handle, spec.path)
        node = handle.get(dataset)
        if node is None:
            found = ", ".join(dataset_names(handle)) or "none"
            raise MelecoleError(f"{spec.path}: no dataset '{dataset}' (datasets: {found})")
        if not isinstance(node, h5py.Dataset):
            raise MelecoleError(f"{spec.path}:{dataset}: is a group, not a dataset")
        return Hdf5Volume(spec.path, dataset, mode, own=handle)
    except BaseException:
        handle.close()
        raise


def _attribute_value(value, key: str, path: Path):
    """A plain JSON value as HDF5 stores it: scalars, lists of text, (nested, rectangular) lists of numbers."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, list):
        if value and all(isinstance(item, str) for item in value):
            return np.array(value, dtype=h5py.string_dtype())
        try:
            numbers = np.array(value)
        except ValueError:  # ragged
            numbers = None
        if numbers is not None and numbers.dtype.kind in "biuf":
            return numbers
    raise MelecoleError(f"{path}: attribute '{key}' = {value!r}: HDF5 attributes hold text, numbers "
                        "and rectangular lists of them; store json.dumps(value) instead")


class Hdf5Container(Container):
    """An HDF5 file of datasets; gzip level 1 and chunked by default."""

    def __init__(self, path: Path, mode: str, handle: h5py.File):
        super().__init__(path, "hdf5", mode)
        self._file = handle

    @classmethod
    def create(cls, path: Path) -> Hdf5Container:
        return cls(path, "a", open_file(path, "w-"))

    @classmethod
    def open(cls, path: Path, mode: str) -> Hdf5Container:
        return cls(path, mode, open_file(path, "r" if mode == "r" else "r+"))

    def names(self) -> list[str]:
        return dataset_names(self._open())

    def _open(self) -> h5py.File:
        if not self._file:
            raise MelecoleError(f"{self.path}: the container is closed")
        return self._file

    def _volume_mode(self) -> str:
        return "r" if self.mode == "r" else "r+"

    def _dataset(self, name: str) -> Hdf5Volume:
        return Hdf5Volume(self.path, name, self._volume_mode(), shared=self._open())

    def _create(self, name, shape, dtype, chunks, attrs, compression, fill_value) -> Hdf5Volume:
        # HDF5 refuses chunks larger than a fixed-size dataset.
        chunks = tuple(max(1, min(c, size)) for c, size in zip(chunks, shape)) if min(shape) > 0 else None
        node = self._open().create_dataset(
            name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill_value,
            compression="gzip" if compression else None, compression_opts=1 if compression else None)
        for key, value in attrs.items():
            node.attrs[key] = _attribute_value(value, key, self.path)
        return self._dataset(name)

    def _read_attrs(self) -> dict:
        return plain_attrs(self._open().attrs)

    def _write_attrs(self, values: dict) -> None:
        handle = self._open()
        for key, value in values.items():
            handle.attrs[key] = _attribute_value(value, key, self.path)

    def close(self) -> None:
        if self._file:
            self._file.close()
