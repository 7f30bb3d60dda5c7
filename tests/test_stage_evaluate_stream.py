"""The evaluate stage reads its volumes block by block: the scores of whole arrays, bounded reads, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from melecole.errors import MelecoleError
from melecole.evaluate import evaluate_segmentation
from melecole.io import VolumeSpec, create_container
from melecole.io.volume import Volume
from melecole.plots import with_vi_sum
from melecole.stages.evaluate import evaluate

CHUNKS = (4, 16, 16)


def _write(path, arrays: dict[str, np.ndarray], chunks=CHUNKS) -> None:
    with create_container(path, format="zarr" if path.suffix == ".zarr" else "hdf5") as container:
        for name, array in arrays.items():
            container.create_dataset(name, array.shape, array.dtype, chunks=chunks).write((0, 0, 0), array)


def _pair(shape=(10, 40, 36), seed=0):
    """Ground truth of boxes with unlabelled voxels; a split-and-merged segmentation with ids up to 2**63."""
    rng = np.random.default_rng(seed)
    cells = (np.arange(shape[0])[:, None, None] // 3 * 100 + np.arange(shape[1])[None, :, None] // 7 * 10
             + np.arange(shape[2])[None, None, :] // 9)  # (Z, Y, X) boxes
    ids = rng.permutation(np.arange(2**62, 2**62 + 20_000, dtype=np.uint64))
    ids[cells.max()] = 2**63
    gt = np.where(rng.random(shape) < 0.1, 0, ids[cells]).astype(np.uint64)
    seg = ids[(cells // 2) * 2 + (rng.random(shape) < 0.05)]  # pairs of boxes merged, noise split off
    return seg, gt


@pytest.fixture
def reads(monkeypatch):
    """Every region read through the Volume interface, by volume name."""
    seen: dict[str, list] = {}
    original = Volume.read

    def spy(self, region=None):
        seen.setdefault(self.name, []).append(region)
        return original(self, region)

    monkeypatch.setattr(Volume, "read", spy)
    return seen


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_scores_and_baselines_equal_whole_arrays_with_blocks_of_bounded_size(tmp_path, suffix, reads):
    seg, gt = _pair()
    baseline = np.where(seg % np.uint64(3) == 0, np.uint64(0), seg)  # label 0 is an ordinary segment
    _write(tmp_path / f"seg{suffix}", {"segmentation": seg, "fragments": baseline})
    _write(tmp_path / f"gt{suffix}", {"labels": gt}, chunks=(5, 8, 36))  # chunks unlike the segmentation's
    seg_spec = VolumeSpec(tmp_path / f"seg{suffix}", "segmentation")
    gt_spec = VolumeSpec(tmp_path / f"gt{suffix}", "labels")

    metrics = evaluate(seg_spec, gt_spec, out=tmp_path / "metrics.json", baselines=True, block_voxels=1000)

    expected = evaluate_segmentation(seg, gt)
    assert metrics == with_vi_sum({**expected, "volume": str(gt_spec), "warnings": [],
                                   "baselines": {"fragments": with_vi_sum(evaluate_segmentation(baseline, gt))}})
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert 0 < metrics["vi_split"] and 0 < metrics["vi_merge"]
    assert len(reads) == 3  # segmentation, baseline, ground truth
    for name, regions in reads.items():
        sizes = [np.prod([s.stop - s.start for s in region]) for region in regions]
        # Each voxel read once (the ground truth once for both segmentations), in blocks of
        # about block_voxels: whole chunks of both layouts (5 x 16 x 36 here) at most.
        assert sum(sizes) == seg.size and len(sizes) > 5, name
        assert max(sizes) <= 5 * 16 * 36, name


@pytest.mark.parametrize(("seg_suffix", "gt_suffix"), [(".zarr", ".h5"), (".h5", ".zarr")])
def test_shape_mismatch_names_files_datasets_and_shapes_before_reading(tmp_path, seg_suffix, gt_suffix, reads):
    _write(tmp_path / f"seg{seg_suffix}", {"segmentation": np.ones((4, 8, 9), np.uint64)})
    _write(tmp_path / f"gt{gt_suffix}", {"labels": np.ones((4, 8, 10), np.uint32)})
    seg_spec = VolumeSpec(tmp_path / f"seg{seg_suffix}", "segmentation")
    gt_spec = VolumeSpec(tmp_path / f"gt{gt_suffix}", "labels")

    with pytest.raises(MelecoleError) as caught:
        evaluate(seg_spec, gt_spec)

    message = str(caught.value)
    assert f"{seg_spec} vs {gt_spec}" in message and "segmentation" in message and "labels" in message
    assert "(4, 8, 9)" in message and "(4, 8, 10)" in message and "\n" not in message
    assert reads == {}


def test_baseline_of_another_shape_or_a_float_dtype_is_named(tmp_path, reads):
    seg, gt = _pair(shape=(4, 16, 16))
    _write(tmp_path / "gt.h5", {"labels": gt})
    _write(tmp_path / "seg.h5", {"segmentation": seg, "small": seg[:, :, :8].copy()})
    _write(tmp_path / "floats.h5", {"segmentation": seg.astype(np.float32)})
    seg_spec, gt_spec = VolumeSpec(tmp_path / "seg.h5", "segmentation"), VolumeSpec(tmp_path / "gt.h5", "labels")

    with pytest.raises(MelecoleError, match=r"seg\.h5:small vs .*gt\.h5:labels: segmentation \(4, 16, 8\) "
                                            r"and ground truth \(4, 16, 16\) differ"):
        evaluate(seg_spec, gt_spec, baselines=True)
    # The file's only dataset, not named in the address, is named in the message.
    with pytest.raises(MelecoleError, match=r"floats\.h5:segmentation vs .*\(4, 16, 16\) has dtype float32.*integer"):
        evaluate(VolumeSpec(tmp_path / "floats.h5"), gt_spec)
    assert reads == {}
    # Without the baselines the segmentation alone is scored.
    assert evaluate(seg_spec, gt_spec) == {**with_vi_sum(evaluate_segmentation(seg, gt)), "volume": str(gt_spec),
                                           "warnings": []}


def test_unlabelled_ground_truth_is_refused_naming_both_volumes(tmp_path):
    _write(tmp_path / "pair.zarr", {"segmentation": np.ones((4, 8, 8), np.uint8),
                                    "labels": np.zeros((4, 8, 8), np.uint8)})
    with pytest.raises(MelecoleError, match=r"pair\.zarr/segmentation vs .*pair\.zarr/labels: ground truth \(4, 8, 8\) "
                                            r"has no voxel outside"):
        evaluate(VolumeSpec(tmp_path / "pair.zarr", "segmentation"), VolumeSpec(tmp_path / "pair.zarr", "labels"))
