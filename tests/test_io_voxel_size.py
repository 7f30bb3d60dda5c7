"""Voxel size (z, y, x, nanometres) from each convention, and written with every dataset."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from melecole.errors import MelecoleError
from melecole.io import create_container, open_volume, write_volumes

DATA = np.zeros((2, 3, 4), np.uint8)


def _voxel_size(address):
    with open_volume(address) as volume:
        return volume.voxel_size


@pytest.mark.parametrize("key, value, expected", [
    ("voxel_size", [40, 8, 4], (40.0, 8.0, 4.0)),
    ("resolution", np.array([40.0, 4.0, 4.0]), (40.0, 4.0, 4.0)),  # CREMI, nm
    ("element_size_um", [0.04, 0.008, 0.004], (40.0, 8.0, 4.0)),  # micrometres -> nm
    ("element_size_um", [1.0, 0.04, 0.008, 0.004], (40.0, 8.0, 4.0)),  # channel entry first
])
def test_hdf5_attribute_conventions(tmp_path, key, value, expected):
    with h5py.File(tmp_path / "v.h5", "w") as handle:
        handle["raw"] = DATA
        handle["raw"].attrs[key] = value
    assert _voxel_size(f"{tmp_path / 'v.h5'}:raw") == expected


def test_hdf5_voxel_size_wins_over_resolution_and_none_without_any(tmp_path):
    with h5py.File(tmp_path / "v.h5", "w") as handle:
        handle["both"] = DATA
        handle["both"].attrs["voxel_size"] = [30, 6, 6]
        handle["both"].attrs["resolution"] = [40, 4, 4]
        handle["plain"] = DATA
        handle["bad"] = DATA
        handle["bad"].attrs["resolution"] = [40, 0, 4]
    assert _voxel_size(f"{tmp_path / 'v.h5'}:both") == (30.0, 6.0, 6.0)
    assert _voxel_size(f"{tmp_path / 'v.h5'}:plain") is None
    bad = r"v.h5:bad: attribute resolution \[40, 0, 4\] is not three positive numbers"
    with pytest.raises(MelecoleError, match=bad):
        open_volume(f"{tmp_path / 'v.h5'}:bad")


def test_zarr_array_attribute(tmp_path):
    root = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
    root.create_array("raw", data=DATA, attributes={"voxel_size": [40, 4, 4]})
    assert _voxel_size(f"{tmp_path / 'v.zarr'}/raw") == (40.0, 4.0, 4.0)


def _multiscale(units="nanometer", global_scale=None):
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": units} for n in "zyx"]
    entry = {
        "version": "0.4", "name": "image", "axes": axes,
        "datasets": [
            {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 40, 8, 8]},
                                                         {"type": "translation", "translation": [0, 5, 5, 5]}]},
            {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 80, 16, 16]}]},
        ],
    }
    if global_scale:
        entry["coordinateTransformations"] = [{"type": "scale", "scale": global_scale}]
    return entry


def _ome_image(path, attrs, zarr_format):
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    root.attrs.update(attrs)
    root.create_array("s0", data=np.zeros((2, 4, 4, 4), np.uint8))
    root.create_array("s1", data=np.zeros((2, 2, 2, 2), np.uint8))


def test_ome_zarr_v04_multiscales(tmp_path):
    _ome_image(tmp_path / "img.zarr", {"multiscales": [_multiscale()]}, zarr_format=2)
    with open_volume(str(tmp_path / "img.zarr")) as volume:  # the first, highest-resolution level
        assert volume.shape == (2, 4, 4, 4) and volume.voxel_size == (40.0, 8.0, 8.0)
    assert _voxel_size(f"{tmp_path / 'img.zarr'}/s1") == (80.0, 16.0, 16.0)


def test_ome_zarr_v05_multiscales_with_units_and_global_scale(tmp_path):
    ome = {"ome": {"version": "0.5", "multiscales": [_multiscale("micrometer", global_scale=[1, 0.5, 0.5, 0.5])]}}
    _ome_image(tmp_path / "img.zarr", ome, zarr_format=3)
    # 40 um * 0.5 = 20 um = 20000 nm along z
    assert _voxel_size(str(tmp_path / "img.zarr")) == (20000.0, 4000.0, 4000.0)
    assert _voxel_size(f"{tmp_path / 'img.zarr'}/s1") == (40000.0, 8000.0, 8000.0)


def test_ome_zarr_image_inside_a_group(tmp_path):
    root = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
    labels = root.require_group("labels/cells")
    labels.attrs.update({"ome": {"version": "0.5", "multiscales": [_multiscale()]}})
    labels.create_array("s0", data=np.zeros((1, 2, 2, 2), np.uint8))
    with open_volume(f"{tmp_path / 'v.zarr'}/labels/cells") as volume:
        assert volume.name.endswith("labels/cells/s0") and volume.voxel_size == (40.0, 8.0, 8.0)


def test_imagej_tiff_spacing_and_resolution(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 5), np.uint8), imagej=True, resolution=(1 / 0.008, 1 / 0.004),
                     metadata={"spacing": 0.04, "unit": "micron", "axes": "ZYX"})
    assert _voxel_size(str(path)) == (40.0, 4.0, 8.0)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((3, 4, 5), np.uint8), photometric="minisblack")
    assert _voxel_size(str(plain)) is None


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_written_datasets_carry_voxel_size(tmp_path, suffix):
    write_volumes(tmp_path / f"a{suffix}", {"raw": DATA, "seg": DATA.astype(np.uint64)}, voxel_size=(40, 4, 4))
    with create_container(tmp_path / f"b{suffix}") as container:
        container.create_dataset("pred", (2, 2, 3, 4), np.float32, voxel_size=(30, 6, 6))
        container.create_dataset("plain", (2, 3, 4), np.float32)
    for name in ("raw", "seg"):
        address = f"{tmp_path / f'a{suffix}'}{':' if suffix == '.h5' else '/'}{name}"
        with open_volume(address) as volume:
            assert volume.voxel_size == (40.0, 4.0, 4.0)
            assert list(volume.attrs["voxel_size"]) == [40.0, 4.0, 4.0]
    sep = ":" if suffix == ".h5" else "/"
    assert _voxel_size(f"{tmp_path / f'b{suffix}'}{sep}pred") == (30.0, 6.0, 6.0)
    assert _voxel_size(f"{tmp_path / f'b{suffix}'}{sep}plain") is None
