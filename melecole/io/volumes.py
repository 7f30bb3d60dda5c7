"""Reading and writing z, y, x volumes in HDF5, with errors that name file, dataset and shape."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from melecole.errors import MelecoleError
from melecole.io.atomic import atomic_output

DEFAULT_DATASET = "stack"


@dataclass(frozen=True)
class VolumeSpec:
    """A volume address ``FILE[:dataset]``.

    Without a dataset name, a file's only dataset is used, else one named ``stack``.
    """

    path: Path
    dataset: str | None = None

    @classmethod
    def parse(cls, text: str) -> VolumeSpec:
        """Splits ``FILE[:dataset]`` at the last colon that follows the file suffix."""
        head, sep, tail = text.rpartition(":")
        if sep and tail and "/" not in tail and Path(head).suffix:
            return cls(Path(head), tail)
        return cls(Path(text), None)

    def __str__(self) -> str:
        return f"{self.path}:{self.dataset}" if self.dataset else str(self.path)


def _default_dataset(handle: h5py.File, path: Path) -> str:
    names = [name for name, node in handle.items() if isinstance(node, h5py.Dataset)]
    if len(names) == 1:
        return names[0]
    if DEFAULT_DATASET in names:
        return DEFAULT_DATASET
    raise MelecoleError(
        f"{path}: holds datasets {', '.join(sorted(names)) or 'none'}; name one as {path}:DATASET"
    )


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise MelecoleError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise MelecoleError(f"{path}: not a readable HDF5 file ({error})") from None


def read_volume(spec: VolumeSpec | str, ndim: int = 3) -> np.ndarray:
    """Reads one dataset fully into memory and checks its dimensionality.

    Args:
        spec: the volume address, a :class:`VolumeSpec` or ``FILE[:dataset]`` text.
        ndim: required number of dimensions (3 for z, y, x; 4 for channels first).

    Raises:
        MelecoleError: missing or corrupt file, missing dataset, wrong dimensionality.
    """
    spec = VolumeSpec.parse(spec) if isinstance(spec, str) else spec
    with _open(spec.path) as handle:
        if spec.dataset is None:
            spec = VolumeSpec(spec.path, _default_dataset(handle, spec.path))
        if spec.dataset not in handle:
            found = ", ".join(sorted(handle.keys())) or "none"
            raise MelecoleError(f"{spec.path}: no dataset '{spec.dataset}' (datasets: {found})")
        node = handle[spec.dataset]
        if not isinstance(node, h5py.Dataset):
            raise MelecoleError(f"{spec}: is a group, not a dataset")
        if node.ndim != ndim:
            raise MelecoleError(f"{spec}: expected {ndim} dimensions, found shape {node.shape}")
        try:
            return node[...]
        except OSError as error:
            raise MelecoleError(f"{spec}: cannot read the data ({error})") from None


def read_volumes(path: str | Path, names: dict[str, int]) -> dict[str, np.ndarray]:
    """Reads several datasets of one file, ``names`` mapping dataset name to required ndim."""
    return {name: read_volume(VolumeSpec(Path(path), name), ndim) for name, ndim in names.items()}


def check_same_shape(path: str | Path, volumes: dict[str, np.ndarray], spatial_only: bool = True) -> None:
    """Raises a clear error when the z, y, x extents of the named arrays differ."""
    shapes = {name: array.shape[-3:] if spatial_only else array.shape for name, array in volumes.items()}
    if len(set(shapes.values())) > 1:
        described = " and ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise MelecoleError(f"{path}: {described} differ in shape")


def write_volumes(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """Writes arrays as chunked, gzip-compressed datasets into a new HDF5 file, atomically."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as handle:
        for name, array in arrays.items():
            handle.create_dataset(name, data=np.ascontiguousarray(array), compression="gzip",
                                  compression_opts=1, chunks=True)
        for key, value in (attrs or {}).items():
            handle.attrs[key] = value
