"""Pieces of the blockwise machinery: streamed intensity statistics, the stored encoding, block
geometry, and partial outputs that resume only the same job."""

from __future__ import annotations

import json

import numpy as np
import pytest

from melecole.blockwise.geometry import aligned_block, block_index, block_regions, grid_shape
from melecole.blockwise.partial import PartialOutput
from melecole.data.normalize import intensity_statistics, normalize_raw
from melecole.errors import MelecoleError
from melecole.inference.encoding import decode, encode, round_trip, stored_bytes_per_voxel


@pytest.mark.parametrize("slab", [1, 37, 10**9])
def test_streamed_statistics_equal_numpy_whatever_the_slab(slab):
    raw = np.random.default_rng(0).gamma(2.0, 30.0, size=(9, 7, 5)).astype(np.float32)
    stats = intensity_statistics(lambda r: raw[r], raw.shape, slab_voxels=slab)
    assert stats.mean == pytest.approx(raw.astype(np.float64).mean(), rel=1e-12)
    assert stats.std == pytest.approx(raw.astype(np.float64).std(), rel=1e-10)
    assert stats.finite == raw.size and stats.nonfinite == 0 and stats.first_nonfinite is None


def test_nonfinite_voxels_are_counted_and_located_and_left_out():
    raw = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    raw[2, 3, 1] = np.inf
    raw[3, 0, 0] = np.nan
    stats = intensity_statistics(lambda r: raw[r], raw.shape, slab_voxels=30)
    finite = raw[np.isfinite(raw)].astype(np.float64)
    assert stats.nonfinite == 2 and stats.first_nonfinite == (2, 3, 1)
    assert stats.mean == pytest.approx(finite.mean()) and stats.std == pytest.approx(finite.std())
    normalised = normalize_raw(np.where(np.isfinite(raw), raw, 0)[:2])
    assert normalised.dtype == np.float32 and abs(float(normalised.mean())) < 1e-6
    with pytest.raises(MelecoleError, match="constant image"):
        normalize_raw(np.full((2, 2, 2), 7.0))


def test_probabilities_are_stored_as_uint8_within_half_a_step():
    values = np.linspace(0, 1, 1001, dtype=np.float32).reshape(1, 1, 7, 143)
    stored = encode("affinities", values)
    assert stored.dtype == np.uint8 and stored.min() == 0 and stored.max() == 255
    assert np.abs(decode(stored) - values).max() <= 0.5 / 255 + 1e-7
    assert encode("embedding", values).dtype == np.float16
    trip = round_trip({"boundary": values[0], "embedding": values})
    np.testing.assert_array_equal(trip["boundary"], decode(encode("boundary", values[0])))
    assert trip["embedding"] is not None and trip["embedding"].dtype == np.float32
    assert stored_bytes_per_voxel({"boundary": 1, "affinities": 12, "embedding": 16}) == 13 + 32
    with pytest.raises(ValueError, match="no stored encoding"):
        encode("labels", values)


def test_blocks_tile_the_volume_and_are_indexed_in_c_order():
    regions = block_regions((10, 7, 4), (4, 4, 4))
    assert grid_shape((10, 7, 4), (4, 4, 4)) == (3, 2, 1) and len(regions) == 6
    assert regions[-1] == (slice(8, 10), slice(4, 7), slice(0, 4))
    assert [block_index(r, (4, 4, 4), (10, 7, 4)) for r in regions] == list(range(6))
    with pytest.raises(MelecoleError, match="multiple of the output chunks"):
        aligned_block((8, 6, 8), (4, 4, 4))


def test_a_partial_output_resumes_the_same_job_only(tmp_path):
    out = tmp_path / "seg.zarr"
    made = []

    def create(path):
        path.mkdir()
        (path / "part").write_text(str(len(made)))
        made.append(path)

    assert PartialOutput(out, {"block": [8, 8, 8]}).prepare(create) is False
    assert PartialOutput(out, {"block": [8, 8, 8]}).prepare(create) is True  # same job: continue
    assert len(made) == 1
    changed = PartialOutput(out, {"block": [16, 8, 8]})
    assert changed.prepare(create) is False and len(made) == 2  # another job starts afresh
    assert (changed.data / "part").read_text() == "1"
    assert json.loads((changed.workdir / "job.json").read_text()) == {"block": [16, 8, 8]}
    out.mkdir()
    (out / "old").write_text("previous output")
    assert changed.finish() == out
    assert (out / "part").read_text() == "1" and not (out / "old").exists()
    assert not changed.data.exists() and not changed.workdir.exists()
