"""The Volume interface over HDF5 and zarr: region reads and writes, leading axes, errors."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import zarr

from melecole.errors import MelecoleError
from melecole.io import create_container, open_volume, read_volume, write_volumes

SUFFIXES = [".h5", ".zarr"]


def _address(path, name):
    return f"{path}:{name}" if path.suffix == ".h5" else f"{path}/{name}"


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("shape", [(6, 7, 8), (2, 6, 7, 8)])
def test_region_reads_and_writes_round_trip(tmp_path, suffix, shape):
    expected = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    path = tmp_path / f"out{suffix}"
    with create_container(path) as container:
        volume = container.create_dataset("pred", shape, np.float32, chunks=shape[:-3] + (3, 4, 4))
        # four blocks of uneven size, leading axes whole
        for z0, y0 in [(0, 0), (0, 4), (3, 0), (3, 4)]:
            block = expected[..., z0:z0 + 3, y0:y0 + 4, :]
            volume.write((z0, y0, 0), block)
    with open_volume(_address(path, "pred"), ndim=len(shape)) as volume:
        assert volume.shape == shape and volume.dtype == np.float32 and volume.ndim == len(shape)
        assert volume.chunks == shape[:-3] + (3, 4, 4)
        np.testing.assert_array_equal(volume.read(), expected)
        region = (slice(1, 5), slice(2, 7), slice(None, 3))
        np.testing.assert_array_equal(volume.read(region), expected[..., 1:5, 2:7, :3])
        assert volume.read((slice(2, 2), slice(0, 7), slice(0, 8))).shape == shape[:-3] + (0, 7, 8)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_reads_are_fresh_arrays(tmp_path, suffix):
    write_volumes(tmp_path / f"v{suffix}", {"raw": np.ones((2, 3, 4), np.uint8)})
    with open_volume(_address(tmp_path / f"v{suffix}", "raw")) as volume:
        first = volume.read()
        first[...] = 9
        assert volume.read().max() == 1


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_open_for_writing_then_reopen(tmp_path, suffix):
    write_volumes(tmp_path / f"v{suffix}", {"seg": np.zeros((4, 4, 4), np.uint64)})
    address = _address(tmp_path / f"v{suffix}", "seg")
    with open_volume(address, mode="r+") as volume:
        volume.write((1, 2, 3), np.full((2, 2, 1), 7, dtype=np.int64))  # int64 values that fit uint64
    expected = np.zeros((4, 4, 4), np.uint64)
    expected[1:3, 2:4, 3:4] = 7
    np.testing.assert_array_equal(read_volume(address), expected)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_region_and_write_errors_quote_region_and_shape(tmp_path, suffix):
    write_volumes(tmp_path / f"v{suffix}", {"raw": np.zeros((4, 5, 6), np.uint8)})
    address = _address(tmp_path / f"v{suffix}", "raw")
    with open_volume(address) as volume:
        with pytest.raises(MelecoleError, match=r"region \(0:4, 0:6, 0:6\) is outside shape \(4, 5, 6\)"):
            volume.read((slice(0, 4), slice(0, 6), slice(0, 6)))
        with pytest.raises(MelecoleError, match=r"region \(-1:2, :, :\) is outside shape"):
            volume.read((slice(-1, 2), slice(None), slice(None)))
        with pytest.raises(MelecoleError, match="a region is 3 slices"):
            volume.read((slice(0, 2), slice(0, 2)))
        with pytest.raises(MelecoleError, match="opened read-only"):
            volume.write((0, 0, 0), np.zeros((1, 1, 1), np.uint8))
    with open_volume(address, mode="r+") as volume:
        outside = r"data of shape \(2, 2, 2\) at start \(3, 0, 0\) is outside shape \(4, 5, 6\)"
        with pytest.raises(MelecoleError, match=outside):
            volume.write((3, 0, 0), np.zeros((2, 2, 2), np.uint8))
        with pytest.raises(MelecoleError, match=r"data of shape \(2, 2\) does not fit a volume of shape \(4, 5, 6\)"):
            volume.write((0, 0, 0), np.zeros((2, 2), np.uint8))
        with pytest.raises(MelecoleError, match="cannot write float64 data into a uint8 volume"):
            volume.write((0, 0, 0), np.full((1, 1, 1), 0.5))
        with pytest.raises(MelecoleError, match=r"int64 values 300..300 do not fit the volume's uint8"):
            volume.write((0, 0, 0), np.full((1, 1, 1), 300))
    assert read_volume(address).max() == 0


def test_four_dimensional_write_needs_whole_channels(tmp_path):
    with create_container(tmp_path / "p.zarr") as container:
        volume = container.create_dataset("affinities", (3, 4, 4, 4), np.float32)
        with pytest.raises(MelecoleError, match=r"data of shape \(2, 4, 4, 4\) does not fit .* leading axes whole"):
            volume.write((0, 0, 0), np.zeros((2, 4, 4, 4), np.float32))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_wrong_ndim_and_missing_dataset(tmp_path, suffix):
    path = tmp_path / f"v{suffix}"
    write_volumes(path, {"raw": np.zeros((2, 3, 4), np.uint8), "labels": np.zeros((2, 3, 4), np.uint8)})
    with pytest.raises(MelecoleError, match=r"raw: expected 4 dimensions, found shape \(2, 3, 4\)"):
        open_volume(_address(path, "raw"), ndim=4)
    with pytest.raises(MelecoleError, match=r"no dataset 'boundary' \(datasets: labels, raw\)"):
        open_volume(_address(path, "boundary"))
    with pytest.raises(MelecoleError, match="holds datasets labels, raw; name one as"):
        open_volume(str(path))


def test_nested_datasets_are_listed_and_addressed(tmp_path):
    with h5py.File(tmp_path / "cremi.h5", "w") as handle:
        handle["volumes/raw"] = np.ones((2, 2, 2), np.uint8)
        handle["volumes/labels/neuron_ids"] = np.zeros((2, 2, 2), np.uint64)
    with pytest.raises(MelecoleError, match=r"\(datasets: volumes/labels/neuron_ids, volumes/raw\)"):
        open_volume(f"{tmp_path / 'cremi.h5'}:volumes/clefts")
    with pytest.raises(MelecoleError, match="volumes: is a group, not a dataset"):
        open_volume(f"{tmp_path / 'cremi.h5'}:volumes")
    assert read_volume(f"{tmp_path / 'cremi.h5'}:volumes/raw").sum() == 8
    root = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
    root.create_array("group/raw", data=np.full((2, 2, 2), 3, np.uint8))
    root.create_array("group/mask", data=np.zeros((2, 2, 2), np.uint8))
    assert read_volume(f"{tmp_path / 'v.zarr'}/group/raw").sum() == 24
    with pytest.raises(MelecoleError, match=r"no dataset 'group/labels' \(datasets: group/mask, group/raw\)"):
        open_volume(f"{tmp_path / 'v.zarr'}/group/labels")


def test_zarr_store_default_array(tmp_path):
    zarr.create_array(str(tmp_path / "root.zarr"), data=np.ones((2, 2, 2), np.uint8))
    assert read_volume(str(tmp_path / "root.zarr")).sum() == 8
    one = zarr.open_group(str(tmp_path / "one.zarr"), mode="w")
    one.create_array("deep/only", data=np.full((2, 2, 2), 2, np.uint8))
    assert read_volume(str(tmp_path / "one.zarr")).sum() == 16
    stack = zarr.open_group(str(tmp_path / "stack.zarr"), mode="w")
    stack.create_array("stack", data=np.full((2, 2, 2), 5, np.uint8))
    stack.create_array("mask", data=np.zeros((2, 2, 2), np.uint8))
    assert read_volume(str(tmp_path / "stack.zarr")).sum() == 40


def test_volumes_pickle_and_reopen(tmp_path):
    data = np.arange(64, dtype=np.int32).reshape(4, 4, 4)
    for suffix in SUFFIXES:
        write_volumes(tmp_path / f"v{suffix}", {"raw": data})
        with open_volume(_address(tmp_path / f"v{suffix}", "raw")) as volume:
            volume.read()
            copy = pickle.loads(pickle.dumps(volume))
        with copy:
            np.testing.assert_array_equal(copy.read((slice(1, 3), slice(None), slice(0, 2))), data[1:3, :, :2])
            assert copy.attrs == volume.attrs


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_read_volume_of_each_container_format(tmp_path, suffix):
    data = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    write_volumes(tmp_path / f"p{suffix}", {"affinities": data, "boundary": data[0]})
    np.testing.assert_array_equal(read_volume(_address(tmp_path / f"p{suffix}", "affinities"), ndim=4), data)
    np.testing.assert_array_equal(read_volume(_address(tmp_path / f"p{suffix}", "boundary")), data[0])


def test_a_corrupt_zarr_chunk_is_a_clear_error(tmp_path):
    path = tmp_path / "v.zarr"
    write_volumes(path, {"raw": np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)})
    chunks = [p for p in (path / "raw").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks, "the store has no chunk files"
    for chunk in chunks:
        chunk.write_bytes(b"not a compressed chunk" * 3)
    with pytest.raises(MelecoleError, match=r"raw: cannot read the data at \[0:4, 0:8, 0:8\]"):
        open_volume(f"{path}/raw").read()
