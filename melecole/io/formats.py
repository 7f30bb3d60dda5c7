"""Which format a volume path holds: by suffix first, else by its first bytes or its folder."""

from __future__ import annotations

import re
from pathlib import Path

from melecole.errors import MelecoleError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")  # zarr v3, v2 group, v2 array
# HDF5 may sit behind a user block of 512, 1024, 2048, ... bytes.
_HDF5_OFFSETS = (0,) + tuple(512 << k for k in range(12))


def suffix_format(path: str | Path) -> str | None:
    """``"hdf5"``, ``"zarr"`` or ``"tiff"`` from the file suffix, None for any other suffix."""
    suffix = Path(path).suffix.lower()
    for name, suffixes in (("hdf5", HDF5_SUFFIXES), ("zarr", ZARR_SUFFIXES), ("tiff", TIFF_SUFFIXES)):
        if suffix in suffixes:
            return name
    return None


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def tiff_sections(folder: str | Path) -> list[Path]:
    """The TIFF files of a folder (hidden ones left out), in name order with numbers compared as numbers."""
    files = [p for p in Path(folder).iterdir()
             if p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: _natural_key(p.name))


def sniff_format(path: str | Path) -> str | None:
    """The format of an existing path from its content: signature bytes, or a folder's files."""
    path = Path(path)
    if path.is_dir():
        if any((path / marker).is_file() for marker in ZARR_MARKERS):
            return "zarr"
        return "tiff" if tiff_sections(path) else None
    with open(path, "rb") as handle:
        head = handle.read(8)
        if head[:4] in TIFF_SIGNATURES:
            return "tiff"
        for offset in _HDF5_OFFSETS:
            handle.seek(offset)
            if handle.read(8) == HDF5_SIGNATURE:
                return "hdf5"
    return None


def detect_format(path: str | Path) -> str:
    """``"hdf5"``, ``"zarr"`` or ``"tiff"``: by suffix (.h5 .hdf5 .hdf, .zarr, .tif .tiff), else by content.

    Raises:
        MelecoleError: the path does not exist, or holds none of the three formats.
    """
    path = Path(path)
    if not path.exists():
        raise MelecoleError(f"{path}: file not found")
    found = suffix_format(path) or sniff_format(path)
    if found is None:
        raise MelecoleError(f"{path}: not an HDF5, zarr or TIFF volume")
    return found
