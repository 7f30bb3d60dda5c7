"""Volume addresses and format detection: suffix first, then signature bytes or folder contents."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from melecole.errors import MelecoleError
from melecole.io import VolumeSpec, detect_format, open_volume, read_volume

PARSE_CASES = [
    ("vol.h5:raw", "vol.h5", "raw"),
    ("a/b.hdf5:volumes/raw", "a/b.hdf5", "volumes/raw"),
    ("a/b.h5:/volumes/labels/neuron_ids", "a/b.h5", "volumes/labels/neuron_ids"),
    ("a/b.h5", "a/b.h5", None),
    ("c:/x/b.h5", "c:/x/b.h5", None),
    ("vol.zarr", "vol.zarr", None),
    ("vol.zarr/", "vol.zarr", None),
    ("vol.zarr/raw", "vol.zarr", "raw"),
    ("/data/vol.zarr/group/raw", "/data/vol.zarr", "group/raw"),
    ("vol.zarr/labels/cells/0", "vol.zarr", "labels/cells/0"),
    ("vol.ZARR/raw", "vol.ZARR", "raw"),
    ("vol.zarr:group/raw", "vol.zarr", "group/raw"),
    ("stack.tif", "stack.tif", None),
    ("scans/stack.tiff", "scans/stack.tiff", None),
    ("scans/sections", "scans/sections", None),
    ("runs/v1.2:x/b.h5", "runs/v1.2:x/b.h5", None),
]


@pytest.mark.parametrize("text, path, dataset", PARSE_CASES)
def test_parse(text, path, dataset):
    assert VolumeSpec.parse(text) == VolumeSpec(Path(path), dataset)


@pytest.mark.parametrize("text", ["vol.h5:raw", "vol.zarr/group/raw", "vol.zarr", "stack.tif"])
def test_text_of_a_spec_parses_back(text):
    assert str(VolumeSpec.parse(text)) == text
    assert VolumeSpec.parse(str(VolumeSpec.parse(text))) == VolumeSpec.parse(text)


def _hdf5(path: Path) -> None:
    with h5py.File(path, "w") as handle:
        handle["raw"] = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)


def _hdf5_user_block(path: Path) -> None:
    with h5py.File(path, "w", userblock_size=1024) as handle:
        handle["raw"] = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)


def _tiff(path: Path) -> None:
    tifffile.imwrite(path, np.arange(8, dtype=np.uint8).reshape(2, 2, 2), photometric="minisblack")


def _big_endian_tiff(path: Path) -> None:
    tifffile.imwrite(path, np.arange(8, dtype=">u2").reshape(2, 2, 2), photometric="minisblack", byteorder=">")


def _zarr_v3(path: Path) -> None:
    zarr.create_array(str(path), data=np.arange(8, dtype=np.uint8).reshape(2, 2, 2))


def _zarr_v2(path: Path) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("raw", data=np.arange(8, dtype=np.uint8).reshape(2, 2, 2))


def _tiff_folder(path: Path) -> None:
    path.mkdir()
    for z in range(2):
        tifffile.imwrite(path / f"s{z}.tif", np.arange(4, dtype=np.uint8).reshape(2, 2) + 4 * z)


@pytest.mark.parametrize("make, expected", [
    (_hdf5, "hdf5"), (_hdf5_user_block, "hdf5"), (_tiff, "tiff"), (_big_endian_tiff, "tiff"),
    (_zarr_v3, "zarr"), (_zarr_v2, "zarr"), (_tiff_folder, "tiff"),
])
def test_format_by_content_without_suffix(tmp_path, make, expected):
    path = tmp_path / "volume"
    make(path)
    assert detect_format(path) == expected
    assert VolumeSpec(path).format == expected
    np.testing.assert_array_equal(read_volume(VolumeSpec(path)), np.arange(8).reshape(2, 2, 2))


def test_suffix_decides_before_content(tmp_path):
    _tiff(tmp_path / "looks.h5")
    assert detect_format(tmp_path / "looks.h5") == "hdf5"
    with pytest.raises(MelecoleError, match="looks.h5: not a readable HDF5 file"):
        read_volume(str(tmp_path / "looks.h5"))


def test_tiff_and_zarr_folder_no_longer_misreported(tmp_path):
    _tiff(tmp_path / "stack.tif")
    _zarr_v3(tmp_path / "vol.zarr")
    assert read_volume(str(tmp_path / "stack.tif")).shape == (2, 2, 2)
    assert read_volume(str(tmp_path / "vol.zarr")).shape == (2, 2, 2)


def test_missing_and_unsupported_paths(tmp_path):
    for name in ("absent.h5", "absent.zarr", "absent.tif", "absent"):
        with pytest.raises(MelecoleError, match=f"{name}: file not found"):
            open_volume(str(tmp_path / name))
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(MelecoleError, match=r"x.png: not an HDF5, zarr or TIFF volume$"):
        read_volume(str(tmp_path / "x.png"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(MelecoleError, match="notes: not an HDF5, zarr or TIFF volume"):
        detect_format(tmp_path / "notes")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(MelecoleError, match="empty.zarr: not a readable zarr store"):
        open_volume(str(tmp_path / "empty.zarr"))
