"""TIFF stacks and folders of sections, read lazily: a z-range touches only its own pages."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from melecole.errors import MelecoleError
from melecole.io import open_volume, read_volume

STACK = np.arange(6 * 5 * 4, dtype=np.uint16).reshape(6, 5, 4)


def _corrupt_pages(path, pages):
    """Overwrites the compressed bytes of ``pages`` so that decoding them fails."""
    with tifffile.TiffFile(path) as tif:
        spans = [(tif.pages[i].dataoffsets[0], tif.pages[i].databytecounts[0]) for i in pages]
    data = bytearray(path.read_bytes())
    for offset, count in spans:
        data[offset:offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))


def test_stack_reads_only_the_pages_of_its_z_range(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, STACK, compression="zlib", photometric="minisblack")
    _corrupt_pages(path, [0, 1, 5])
    with open_volume(str(path), ndim=3) as volume:
        assert volume.shape == (6, 5, 4) and volume.dtype == np.uint16 and volume.chunks == (1, 5, 4)
        np.testing.assert_array_equal(volume.read((slice(2, 5), slice(1, 4), slice(None))), STACK[2:5, 1:4])
        np.testing.assert_array_equal(volume.read((slice(3, 4), slice(None), slice(2, 4))), STACK[3:4, :, 2:4])
        with pytest.raises(MelecoleError, match=r"stack.tif: cannot read pages 0..2"):
            volume.read((slice(0, 3), slice(None), slice(None)))


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_uncompressed_stack_regions(tmp_path, byteorder):
    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, STACK, photometric="minisblack", byteorder=byteorder)
    with open_volume(str(path)) as volume:
        got = volume.read((slice(4, 6), slice(0, 2), slice(1, 3)))
        np.testing.assert_array_equal(got, STACK[4:6, :2, 1:3])
        assert got.dtype == np.uint16 and got.dtype.isnative
    np.testing.assert_array_equal(read_volume(str(path)), STACK)


def test_folder_of_sections_reads_only_the_files_of_its_z_range(tmp_path):
    folder = tmp_path / "sections"
    folder.mkdir()
    # numbered without padding: 10 must come after 9, not after 1
    for z in range(11):
        section = np.full((5, 4), z, dtype=np.uint8)
        tifffile.imwrite(folder / f"slice_{z}.tif", section)
    (folder / "slice_3.tif").write_bytes(b"II*\x00 not really a tiff")
    (folder / "notes.txt").write_text("ignored")
    with open_volume(str(folder)) as volume:
        assert volume.shape == (11, 5, 4) and volume.dtype == np.uint8
        np.testing.assert_array_equal(volume.read((slice(8, 11), slice(None), slice(None)))[:, 0, 0], [8, 9, 10])
        np.testing.assert_array_equal(volume.read((slice(4, 6), slice(1, 2), slice(0, 1))).ravel(), [4, 5])
        with pytest.raises(MelecoleError, match="slice_3.tif: not a readable TIFF section"):
            volume.read((slice(2, 5), slice(None), slice(None)))


def test_folder_section_of_another_shape_is_an_error(tmp_path):
    folder = tmp_path / "sections"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.zeros((5, 4), np.uint8))
    tifffile.imwrite(folder / "b.tif", np.zeros((5, 3), np.uint8))
    with open_volume(str(folder)) as volume:
        assert volume.read((slice(0, 1), slice(None), slice(None))).shape == (1, 5, 4)
        with pytest.raises(MelecoleError, match=r"b.tif: section \(5, 3\) uint8 differs from a.tif \(5, 4\) uint8"):
            volume.read()


def test_tiff_errors(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, STACK, photometric="minisblack")
    with pytest.raises(MelecoleError, match=r"stack.tif: expected 4 dimensions, found shape \(6, 5, 4\)"):
        read_volume(str(path), ndim=4)
    with pytest.raises(MelecoleError, match="TIFF volumes are read-only"):
        open_volume(str(path), mode="r+")
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((5, 4, 3), np.uint8), photometric="rgb")
    with pytest.raises(MelecoleError, match=r"rgb.tif: expected 2D grayscale pages .* found series shape \(5, 4, 3\)"):
        open_volume(str(rgb))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 4)
    with pytest.raises(MelecoleError, match="broken.tif: not a readable TIFF file"):
        open_volume(str(broken))
