"""Volume addresses: ``vol.h5:raw``, ``vol.zarr/group/raw``, ``vol.zarr``, ``stack.tif``, a TIFF folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from melecole.io.formats import HDF5_SUFFIXES, ZARR_SUFFIXES, detect_format

DEFAULT_DATASET = "stack"  # the dataset an address without one falls back to, in HDF5 and zarr
# Containers whose dataset names may hold slashes after the colon (``vol.h5:volumes/raw``).
_CONTAINER_SUFFIXES = HDF5_SUFFIXES + ZARR_SUFFIXES


@dataclass(frozen=True)
class VolumeSpec:
    """A volume address: the file, store or folder, and the dataset inside it.

    ``dataset`` is the HDF5 dataset or the zarr array path (``group/raw``); None picks the
    only dataset, else one named ``stack`` (HDF5, zarr), an OME-Zarr image's first level
    (zarr), or the whole stack (TIFF).
    """

    path: Path
    dataset: str | None = None

    @classmethod
    def parse(cls, text: str) -> VolumeSpec:
        """Splits an address into path and dataset.

        ``FILE:dataset`` splits at the last colon that follows a file suffix (``vol.h5:raw``,
        ``vol.h5:volumes/raw``, ``vol.zarr:group/raw``); otherwise a path component ending in
        ``.zarr`` is the store and what follows it the array path (``vol.zarr/group/raw``);
        anything else (``stack.tif``, a folder of TIFF sections) is a path alone.
        """
        head, sep, tail = text.rpartition(":")
        suffix = Path(head).suffix.lower() if sep else ""
        if tail.strip("/") and suffix and ("/" not in tail or suffix in _CONTAINER_SUFFIXES):
            return cls(Path(head), tail.strip("/"))
        parts = Path(text).parts
        for i, part in enumerate(parts):
            if Path(part).suffix.lower() in ZARR_SUFFIXES:
                rest = "/".join(parts[i + 1:])
                return cls(Path(*parts[: i + 1]), rest or None)
        return cls(Path(text), None)

    @property
    def format(self) -> str:
        """``"hdf5"``, ``"zarr"`` or ``"tiff"``, by suffix else by content (see :func:`detect_format`)."""
        return detect_format(self.path)

    def __str__(self) -> str:
        if not self.dataset:
            return str(self.path)
        separator = "/" if self.path.suffix.lower() in ZARR_SUFFIXES else ":"
        return f"{self.path}{separator}{self.dataset}"
