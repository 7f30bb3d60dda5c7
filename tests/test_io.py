"""HDF5 reading and atomic writing: clear errors naming file, dataset and shapes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from melecole.errors import MelecoleError
from melecole.io import VolumeSpec, atomic_output, check_same_shape, read_volume, write_volumes


def test_volume_spec_parsing():
    assert VolumeSpec.parse("a/b.h5:raw") == VolumeSpec(Path("a/b.h5"), "raw")
    assert VolumeSpec.parse("a/b.h5") == VolumeSpec(Path("a/b.h5"), None)
    assert VolumeSpec.parse("c:/x/b.h5") == VolumeSpec(Path("c:/x/b.h5"), None)


def test_round_trip_and_default_dataset(tmp_path):
    data = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    write_volumes(tmp_path / "one.h5", {"stuff": data})
    np.testing.assert_array_equal(read_volume(str(tmp_path / "one.h5")), data)
    write_volumes(tmp_path / "two.h5", {"raw": data, "labels": data})
    np.testing.assert_array_equal(read_volume(f"{tmp_path / 'two.h5'}:labels"), data)
    with pytest.raises(MelecoleError, match="holds datasets labels, raw"):
        read_volume(str(tmp_path / "two.h5"))


def test_errors_name_file_dataset_and_shape(tmp_path):
    with pytest.raises(MelecoleError, match="absent.h5: file not found"):
        read_volume(str(tmp_path / "absent.h5"))
    write_volumes(tmp_path / "v.h5", {"raw": np.zeros((2, 3, 4), np.uint8)})
    with pytest.raises(MelecoleError, match=r"no dataset 'labels' \(datasets: raw\)"):
        read_volume(f"{tmp_path / 'v.h5'}:labels")
    with pytest.raises(MelecoleError, match=r"expected 4 dimensions, found shape \(2, 3, 4\)"):
        read_volume(f"{tmp_path / 'v.h5'}:raw", ndim=4)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    with pytest.raises(MelecoleError, match="corrupt.h5: not a readable HDF5 file"):
        read_volume(str(corrupt))
    with pytest.raises(MelecoleError, match=r"raw \(2, 3, 4\) and labels \(2, 3, 5\) differ"):
        check_same_shape("f.h5", {"raw": np.zeros((2, 3, 4)), "labels": np.zeros((2, 3, 5))})


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(TypeError):
        write_volumes(target, {"bad": np.array([object()], dtype=object)})
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_written_files_are_readable_by_h5py(tmp_path):
    write_volumes(tmp_path / "a.h5", {"x": np.ones((3, 4, 5), np.float32)}, attrs={"source": "test"})
    with h5py.File(tmp_path / "a.h5") as handle:
        assert handle.attrs["source"] == "test"
        assert handle["x"].compression == "gzip"
