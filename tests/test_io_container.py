"""Output containers (HDF5 file, zarr store): datasets, attributes, chunks, parallel and atomic writes."""

from __future__ import annotations

import json
import multiprocessing

import h5py
import numpy as np
import pytest

from melecole.errors import MelecoleError
from melecole.io import (atomic_directory, create_container, default_chunks, open_container, open_volume,
                         read_volume, write_volumes)

SUFFIXES = [".h5", ".zarr"]


@pytest.mark.parametrize("shape, expected", [
    ((100, 30, 200), (64, 30, 64)),
    ((12, 100, 30, 200), (12, 64, 30, 64)),
    ((2, 3, 1, 1, 1), (2, 3, 1, 1, 1)),
])
def test_default_chunks(shape, expected):
    assert default_chunks(shape) == expected


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_datasets_and_attributes(tmp_path, suffix):
    path = tmp_path / f"pred{suffix}"
    with create_container(path) as container:
        affinities = container.create_dataset("affinities", (3, 70, 8, 8), np.float32)
        container.create_dataset("boundary", (70, 8, 8), np.float32, fill_value=1.0)
        container.create_dataset("extra/embedding", (4, 70, 8, 8), np.float16, chunks=(4, 8, 8, 8))
        container.set_attrs({"offsets": [[1, 0, 0], [0, 1, 0]], "source": "raw.h5:raw", "augment": True,
                             "threshold": np.float64(0.25), "steps": [1, 2, 3]})
        assert affinities.chunks == (3, 64, 8, 8)
        with pytest.raises(MelecoleError, match="already holds dataset 'boundary'"):
            container.create_dataset("boundary", (70, 8, 8), np.float32)
        with pytest.raises(MelecoleError, match=r"needs z, y, x axes, got shape \(8, 8\)"):
            container.create_dataset("flat", (8, 8), np.float32)
    with open_container(path) as container:
        assert container.names() == ["affinities", "boundary", "extra/embedding"]
        attrs = dict(container.attrs)
        assert attrs["source"] == "raw.h5:raw" and attrs["augment"] is True and attrs["threshold"] == 0.25
        assert list(attrs["steps"]) == [1, 2, 3]
        boundary = container.dataset("boundary")
        assert boundary.read((slice(0, 1), slice(0, 1), slice(0, 1))).item() == 1.0
        assert container.dataset("extra/embedding").chunks == (4, 8, 8, 8)
        listed = r"no dataset 'labels' \(datasets: affinities, boundary, extra/embedding\)"
        with pytest.raises(MelecoleError, match=listed):
            container.dataset("labels")
        with pytest.raises(MelecoleError, match="opened read-only"):
            container.set_attrs({"x": 1})
        with pytest.raises(TypeError):
            container.attrs["x"] = 1  # read-only view: nothing silently lost
    with open_container(path, mode="a") as container:
        container.set_attrs({"stage": "predict"})
        container.dataset("boundary").write((0, 0, 0), np.zeros((1, 8, 8), np.float32))
    with open_container(path) as container:
        assert container.attrs["stage"] == "predict" and container.attrs["source"] == "raw.h5:raw"
        assert container.dataset("boundary").read().sum() == 69 * 64


def test_hdf5_attributes_reject_what_hdf5_cannot_hold(tmp_path):
    with create_container(tmp_path / "p.h5") as container:
        with pytest.raises(MelecoleError, match=r"attribute 'config' = .*store json.dumps\(value\) instead"):
            container.set_attrs({"config": {"a": 1}})
        container.set_attrs({"config": json.dumps({"a": 1})})
        with pytest.raises(MelecoleError, match="attribute 'bad' = .* is not a JSON value"):
            container.set_attrs({"bad": object()})


def test_container_creation_rules(tmp_path):
    with create_container(tmp_path / "p.zarr") as container:
        container.create_dataset("raw", (2, 2, 2), np.uint8)
    with pytest.raises(MelecoleError, match="p.zarr: already exists; pass overwrite=True"):
        create_container(tmp_path / "p.zarr")
    with create_container(tmp_path / "p.zarr", overwrite=True) as container:
        assert container.names() == []
    with pytest.raises(MelecoleError, match="p.n5: a container is an HDF5 file .* or a zarr store"):
        create_container(tmp_path / "p.n5")
    with open_container(tmp_path / "new.h5", mode="a") as container:  # created when missing
        container.create_dataset("raw", (2, 2, 2), np.uint8)
    assert read_volume(f"{tmp_path / 'new.h5'}:raw").shape == (2, 2, 2)
    with pytest.raises(MelecoleError, match="absent.zarr: file not found"):
        open_container(tmp_path / "absent.zarr")


def test_stored_compression_and_chunks(tmp_path):
    data = np.zeros((4, 70, 9, 9), np.float32)
    write_volumes(tmp_path / "p.h5", {"affinities": data})
    with h5py.File(tmp_path / "p.h5") as handle:
        assert handle["affinities"].compression == "gzip" and handle["affinities"].compression_opts == 1
        assert handle["affinities"].chunks == (4, 64, 9, 9)
    write_volumes(tmp_path / "p.zarr", {"affinities": data}, voxel_size=(40, 4, 4))
    meta = json.loads((tmp_path / "p.zarr" / "affinities" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 64, 9, 9]
    blosc = [codec for codec in meta["codecs"] if codec["name"] == "blosc"]
    assert blosc and blosc[0]["configuration"]["cname"] == "zstd"
    assert meta["attributes"]["voxel_size"] == [40.0, 4.0, 4.0]
    assert meta["dimension_names"] == ["c", "z", "y", "x"]


def _write_blocks(address, starts):
    with open_volume(address, mode="r+") as volume:
        for z0 in starts:
            volume.write((z0, 0, 0), np.full((4, 8, 8), z0 + 1, dtype=np.uint32))


def test_two_processes_writing_disjoint_chunks_of_one_zarr_array(tmp_path):
    path = tmp_path / "seg.zarr"
    with create_container(path) as container:
        container.create_dataset("seg", (16, 8, 8), np.uint32, chunks=(4, 4, 4))
    address = f"{path}/seg"
    context = multiprocessing.get_context("fork")
    # interleaved chunk-aligned blocks: each process's blocks lie between the other's
    workers = [context.Process(target=_write_blocks, args=(address, starts)) for starts in ((0, 8), (4, 12))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert [worker.exitcode for worker in workers] == [0, 0]
    expected = np.repeat(np.array([1, 5, 9, 13], np.uint32), 4)[:, None, None] * np.ones((1, 8, 8), np.uint32)
    np.testing.assert_array_equal(read_volume(address), expected)


def test_atomic_zarr_write_leaves_nothing_on_failure(tmp_path):
    good = np.ones((2, 3, 4), np.uint8)
    with pytest.raises(TypeError):
        write_volumes(tmp_path / "out.zarr", {"raw": good, "bad": np.array([[[object()]]], dtype=object)})
    assert list(tmp_path.iterdir()) == []
    write_volumes(tmp_path / "out.zarr", {"raw": good}, attrs={"run": 1})
    with pytest.raises(TypeError):
        write_volumes(tmp_path / "out.zarr", {"raw": good * 2, "bad": np.array([[[object()]]], dtype=object)})
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]
    np.testing.assert_array_equal(read_volume(f"{tmp_path / 'out.zarr'}/raw"), good)
    write_volumes(tmp_path / "out.zarr", {"seg": good * 3}, attrs={"run": 2})
    with open_container(tmp_path / "out.zarr") as container:
        assert container.names() == ["seg"] and container.attrs["run"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]


def test_atomic_directory_replaces_only_when_complete(tmp_path):
    target = tmp_path / "store"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            tmp.mkdir()
            (tmp / "half").write_text("half")
            assert (target / "old").read_text() == "old"  # untouched while the new one is written
            raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["store"] and [p.name for p in target.iterdir()] == ["old"]
    with atomic_directory(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["store"] and [p.name for p in target.iterdir()] == ["new"]
