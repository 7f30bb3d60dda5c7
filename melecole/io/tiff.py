"""TIFF volumes, read lazily (tifffile): one multi-page stack (pages = z) or a folder of 2D sections.

A read of z-range ``a:b`` touches only pages (or files) ``a`` to ``b - 1``, so a stack larger
than memory can be read block by block. TIFF volumes are read-only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from melecole.errors import MelecoleError
from melecole.io.formats import tiff_sections
from melecole.io.spec import VolumeSpec
from melecole.io.units import VoxelSize, voxel_size_from
from melecole.io.volume import Volume


def _open(path: Path) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except (OSError, ValueError) as error:
        raise MelecoleError(f"{path}: not a readable TIFF file ({error})") from None


def imagej_voxel_size(tif: tifffile.TiffFile, name: str) -> VoxelSize | None:
    """z from ImageJ's ``spacing``, y and x from the YResolution / XResolution tags (pixels per
    unit), in nm when ImageJ's ``unit`` is a known length; None without ImageJ spacing."""
    metadata = tif.imagej_metadata or {}
    tags = tif.pages.first.tags
    if "spacing" not in metadata or "XResolution" not in tags or "YResolution" not in tags:
        return None
    sizes = [float(metadata["spacing"])]
    for tag in ("YResolution", "XResolution"):
        pixels, per = tags[tag].value
        if not pixels:
            return None
        sizes.append(per / pixels)
    unit = metadata.get("unit")
    return voxel_size_from(sizes, name, "ImageJ spacing and resolution", (unit, unit, unit))


def _series_shape(tif: tifffile.TiffFile, path: Path) -> tuple[tifffile.TiffPageSeries, tuple[int, int, int]]:
    """The one image series of a file and its z, y, x shape (a 2D image is one section)."""
    if not tif.series:
        raise MelecoleError(f"{path}: not a readable TIFF file (no image in it)")
    if len(tif.series) != 1:
        shapes = ", ".join(str(s.shape) for s in tif.series)
        raise MelecoleError(f"{path}: holds {len(tif.series)} image series ({shapes}); "
                            "expected one stack of equal 2D pages")
    series = tif.series[0]
    shape = (1,) + tuple(series.shape) if len(series.shape) == 2 else tuple(series.shape)
    if len(shape) != 3 or "S" in series.axes:  # S: colour samples, not sections
        raise MelecoleError(f"{path}: expected 2D grayscale pages (z, y, x), "
                            f"found series shape {series.shape} (axes {series.axes})")
    return series, shape


class TiffStackVolume(Volume):
    """A multi-page TIFF, page ``z`` holding section ``z``; the file stays open until :meth:`close`."""

    _transient = ("_tiff",)

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tiff = None
        tif = self._file()
        try:
            series, shape = _series_shape(tif, self.path)
            # Uncompressed contiguous data (most EM exports, ImageJ's large stacks) is read by
            # offset; otherwise page by page, so compressed or scattered pages work too.
            self._offset = series.dataoffset
            if self._offset is None and len(series.pages) != shape[0]:
                raise MelecoleError(f"{self.path}: {len(series.pages)} pages for a stack of shape {shape}; "
                                    "expected one page per section")
            self._byteorder = tif.byteorder
            voxel_size = imagej_voxel_size(tif, str(self.path))
        except BaseException:
            self.close()
            raise
        super().__init__(name=str(self.path), shape=shape, dtype=series.dtype, chunks=(1,) + shape[1:],
                         voxel_size=voxel_size, attrs={}, writable=False)

    def _file(self) -> tifffile.TiffFile:
        if self._tiff is None:
            self._tiff = _open(self.path)
        return self._tiff

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        z, y, x = index
        depth = z.stop - z.start
        if depth == 0:
            return np.empty((0, y.stop - y.start, x.stop - x.start), self.dtype)
        if self._offset is not None:
            stored = self.dtype.newbyteorder(self._byteorder)
            section = int(np.prod(self.shape[1:])) * stored.itemsize
            try:
                pages = np.memmap(self.path, stored, "r", self._offset + z.start * section, (depth,) + self.shape[1:])
            except (OSError, ValueError) as error:  # a truncated file
                raise MelecoleError(f"{self.name}: cannot read pages {z.start}..{z.stop - 1} ({error})") from None
            return np.array(pages[:, y, x], dtype=self.dtype)
        try:
            pages = self._file().asarray(key=range(z.start, z.stop), series=0)
        except Exception as error:  # codecs raise their own types (zlib.error, imagecodecs errors)
            raise MelecoleError(f"{self.name}: cannot read pages {z.start}..{z.stop - 1} ({error})") from None
        return np.ascontiguousarray(pages.reshape((depth,) + self.shape[1:])[:, y, x])

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
        self._tiff = None


class TiffFolderVolume(Volume):
    """A folder of single-section TIFF files, section ``z`` the ``z``-th file in name order.

    Shape and dtype come from the first file alone; every file read is checked against them.
    """

    def __init__(self, path: Path, files: list[Path]):
        self.path, self.files = Path(path), files
        if not files:
            raise MelecoleError(f"{path}: a folder volume needs .tif or .tiff sections; it holds none")
        with _open(files[0]) as tif:
            series, shape = _series_shape(tif, files[0])
            if shape[0] != 1:
                raise MelecoleError(f"{files[0]}: a section file holds {shape[0]} pages; expected one 2D image")
            voxel_size = imagej_voxel_size(tif, str(path))
            dtype = series.dtype
        super().__init__(name=str(self.path), shape=(len(files),) + shape[1:], dtype=dtype,
                         chunks=(1,) + shape[1:], voxel_size=voxel_size, attrs={}, writable=False)

    def _section(self, file: Path) -> np.ndarray:
        try:
            with tifffile.TiffFile(file) as tif:
                section = tif.series[0].asarray() if tif.series else None
        except Exception as error:  # codecs raise their own types (zlib.error, imagecodecs errors)
            raise MelecoleError(f"{file}: not a readable TIFF section ({error})") from None
        if section is None:
            raise MelecoleError(f"{file}: not a readable TIFF section (no image in it)")
        if section.shape != self.shape[1:] or section.dtype != self.dtype:
            raise MelecoleError(f"{file}: section {section.shape} {section.dtype} differs from "
                                f"{self.files[0].name} {self.shape[1:]} {self.dtype}")
        return section

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        z, y, x = index
        out = np.empty((z.stop - z.start, y.stop - y.start, x.stop - x.start), self.dtype)
        for i, file in enumerate(self.files[z]):
            out[i] = self._section(file)[y, x]
        return out


def open_tiff(spec: VolumeSpec, mode: str) -> Volume:
    """A TIFF stack file or a folder of TIFF sections as a read-only volume."""
    if spec.dataset:
        raise MelecoleError(f"{spec.path}: a TIFF volume has no datasets (asked for '{spec.dataset}')")
    if mode != "r":
        raise MelecoleError(f"{spec.path}: TIFF volumes are read-only; write HDF5 or zarr instead")
    if spec.path.is_dir():
        return TiffFolderVolume(spec.path, tiff_sections(spec.path))
    return TiffStackVolume(spec.path)
