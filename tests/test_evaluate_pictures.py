"""evaluate's test pictures: split / merge errors judged on the whole volume, drawn on its middle
slice, logged to the MLflow run and written as PNG."""

from __future__ import annotations

import io

import mlflow
import numpy as np
import pytest
from PIL import Image

from melecole.cli import main
from melecole.figures import (BOTH_COLOUR, MERGE_COLOUR, SPLIT_COLOUR, error_map, evaluation_image, grey,
                              png_bytes, split_and_merged)
from melecole.io import VolumeSpec, create_container
from melecole.io.volume import Volume
from melecole.stages.evaluate import evaluate
from melecole.tracking import Tracker

SHAPE = (6, 32, 32)  # (Z, Y, X)
GAP = 4  # panel_image's white columns between panels


def _quadrants() -> tuple[np.ndarray, np.ndarray]:
    """Ground truth of four objects, one per (y, x) quadrant; a segmentation that cuts object 1
    in two (segments 10, 11), keeps object 2 whole (20) and merges objects 3 and 4 (30)."""
    gt = np.zeros(SHAPE, np.uint64)
    gt[:, :16, :16], gt[:, :16, 16:], gt[:, 16:, :16], gt[:, 16:, 16:] = 1, 2, 3, 4
    seg = np.full(SHAPE, 30, np.uint64)
    seg[:, :16, :8], seg[:, :16, 8:16], seg[:, :16, 16:] = 10, 11, 20
    return seg, gt


def _pairs(seg: np.ndarray, gt: np.ndarray):
    """The contingency table's non-zero entries (segment, object, voxels), gt 0 left out."""
    kept = gt != 0
    pairs, counts = np.unique(np.stack([seg[kept], gt[kept]]), axis=1, return_counts=True)
    return pairs[0], pairs[1], counts


def _write(path, arrays: dict[str, np.ndarray]) -> None:
    with create_container(path, format="hdf5") as container:
        for name, array in arrays.items():
            container.create_dataset(name, array.shape, array.dtype, chunks=(2, 16, 16)).write((0, 0, 0), array)


def _panel(image: np.ndarray, index: int, width: int = SHAPE[2]) -> np.ndarray:
    return image[:, index * (width + GAP): index * (width + GAP) + width]


@pytest.mark.parametrize("case, split, merged", [
    ("cut", [1], []),  # one object in two segments
    ("joined", [], [30]),  # two objects in one segment
    ("perfect", [], []),
    ("sliver", [], []),  # a segment bleeds 1 / 16 into its neighbour: under the 10 % of an error
    ("fragments", [2], []),  # an object in 16 small fragments, none of them 10 % of it
    ("swallowed", [], [7]),  # a segment holding 32 whole small objects, none 10 % of it
])
def test_split_and_merged_on_hand_made_volumes(case, split, merged):
    gt = np.zeros((1, 16, 32), np.uint64)  # (Z, Y, X): object 1 left, object 2 right
    gt[..., :16], gt[..., 16:] = 1, 2
    x, y = np.arange(32), np.arange(16)[:, None]
    seg = {"cut": np.where(gt == 1, np.where(x < 8, 8, 9), 20),
           "joined": np.full_like(gt, 30),
           "perfect": gt * 5,
           "sliver": np.where(x < 17, 5, 6) * np.ones_like(gt),
           "fragments": np.where(gt == 2, 100 + y, 1),
           "swallowed": np.full_like(gt, 7)}[case].astype(np.uint64)
    if case == "swallowed":
        gt = (1 + y + 16 * (x >= 16)).astype(np.uint64) * np.ones_like(gt)
    found_split, found_merged = split_and_merged(*_pairs(seg, gt))
    assert found_split.tolist() == split and found_merged.tolist() == merged
    assert found_split.dtype == gt.dtype and found_merged.dtype == seg.dtype


def test_split_and_merged_leaves_unlabelled_voxels_out_and_checks_lengths():
    # Segment 3 covers object 1 and much unlabelled space (not in the table): no merge.
    split, merged = split_and_merged(np.array([3, 3]), np.array([1, 2]), np.array([100, 5]))
    assert split.tolist() == [] and merged.tolist() == []
    with pytest.raises(ValueError, match=r"segments \(2,\), objects \(1,\)"):
        split_and_merged(np.array([3, 3]), np.array([1]), np.array([100, 5]))


def test_picture_colours_whole_volume_errors_on_the_slice():
    seg, gt = _quadrants()
    split, merged = split_and_merged(*_pairs(seg, gt))
    assert split.tolist() == [1] and merged.tolist() == [30]
    image = evaluation_image(gt[3], seg[3], split, merged)
    assert image.shape == (32, 3 * 32 + 2 * GAP, 3) and image.dtype == np.uint8
    overlay = _panel(image, 2)
    assert (overlay[:16, :16] == SPLIT_COLOUR).all()  # both halves of object 1, though each is whole in its segment
    assert (overlay[:16, 16:] == 96).all()  # object 2: correct
    assert (overlay[16:] == MERGE_COLOUR).all()  # objects 3 and 4 in segment 30
    # A slice alone can mislead: on the last slice segment 20 holds object 2 whole, but the whole
    # volume says object 2 is split (segment 21 holds most of it, on the other slices).
    gt_z, seg_z = gt.copy(), seg.copy()
    seg_z[:5][gt_z[:5] == 2] = 21
    split, merged = split_and_merged(*_pairs(seg_z, gt_z))
    assert (_panel(evaluation_image(gt_z[5], seg_z[5], split, merged), 2)[:16, 16:] == SPLIT_COLOUR).all()
    perfect = evaluation_image(gt[3], gt[3], *split_and_merged(*_pairs(gt, gt)))
    assert (_panel(perfect, 2) == 96).all()  # no error colour anywhere


def test_overlay_on_raw_tints_errors_and_dims_unlabelled_voxels():
    seg, gt = _quadrants()
    gt[:, :, :2] = 0  # a strip without ground truth
    raw = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    split, merged = split_and_merged(*_pairs(seg, gt))
    image = evaluation_image(gt[3], seg[3], split, merged, raw[3])
    assert image.shape == (32, 4 * 32 + 3 * GAP, 3)
    background = grey(raw[3])
    np.testing.assert_array_equal(_panel(image, 0), background)
    overlay = _panel(image, 3).astype(int)
    np.testing.assert_array_equal(overlay[:16, 16:], background[:16, 16:])  # correct: the raw as is
    np.testing.assert_array_equal(overlay[:, :2], background[:, :2] // 3)  # unlabelled: dimmed
    red, blue = overlay[:16, 2:16], overlay[16:, 16:]
    assert (red[..., 0] > red[..., 2] + 80).all() and (blue[..., 2] > blue[..., 0] + 80).all()
    both = error_map(np.array([[1, 1]]), np.array([[1, 1]]), np.array([1]), np.array([1]))
    assert (both == BOTH_COLOUR).all()
    with pytest.raises(ValueError, match="both or neither"):
        error_map(seg[3], gt[3], split=split)


def test_png_bytes_round_trip():
    image = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = png_bytes(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), image)
    with pytest.raises(ValueError, match=r"\(5, 7\) uint8"):
        png_bytes(image[..., 0])


@pytest.fixture
def volumes(tmp_path):
    seg, gt = _quadrants()
    raw = np.random.default_rng(2).random(SHAPE).astype(np.float32)
    _write(tmp_path / "test.h5", {"raw": raw, "labels": gt})
    _write(tmp_path / "seg.h5", {"segmentation": seg, "mws": gt.copy()})  # the baseline is perfect
    return tmp_path


def test_picture_file_without_mlflow_reads_only_the_middle_slice(volumes, monkeypatch, capsys):
    seen = []
    original = Volume.read
    monkeypatch.setattr(Volume, "read", lambda self, region=None: seen.append((self.name, region))
                        or original(self, region))
    out = volumes / "pictures" / "test.png"
    assert main(["evaluate", "--seg", f"{volumes / 'seg.h5'}:segmentation", "--gt", f"{volumes / 'test.h5'}:labels",
                 "--raw", f"{volumes / 'test.h5'}:raw", "--picture", str(out)]) == 0
    capsys.readouterr()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape == (32, 4 * 32 + 3 * GAP, 3)
    assert (_panel(picture, 3)[:16, :16, 0] >= 149).all()  # object 1 split: red over the raw
    raw_reads = [region for name, region in seen if name.endswith("test.h5:raw")]
    assert raw_reads == [(slice(3, 4), slice(0, 32), slice(0, 32))]


def test_evaluate_with_a_run_logs_the_pictures_to_mlflow(volumes, monkeypatch):
    uri = f"sqlite:///{volumes / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(volumes)  # the local artifact store goes under tmp_path
    tracker = Tracker.start("pictures", {"seed": 0})
    run_file = volumes / "run.txt"
    run_file.write_text(tracker.run_id + "\n")
    picture = volumes / "picture.png"
    metrics = evaluate(VolumeSpec(volumes / "seg.h5", "segmentation"), VolumeSpec(volumes / "test.h5", "labels"),
                       run_file=run_file, baselines=True, raw=VolumeSpec(volumes / "test.h5", "raw"), picture=picture)
    assert metrics["vi_split"] > 0 and metrics["baselines"]["mws"]["vi_split"] == 0  # behaviour kept
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and "test_vi_split" in run.data.metrics
    assert [a.path for a in client.list_artifacts(tracker.run_id, "test")] == ["test/baselines", "test/segmentation.png"]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "test/baselines")] == ["test/baselines/mws.png"]
    logged = client.download_artifacts(tracker.run_id, "test/segmentation.png", str(volumes))
    assert open(logged, "rb").read() == picture.read_bytes()
    baseline = np.asarray(Image.open(client.download_artifacts(tracker.run_id, "test/baselines/mws.png",
                                                               str(volumes))).convert("RGB"))
    background = _panel(baseline, 0)
    np.testing.assert_array_equal(_panel(baseline, 3), background)  # perfect: the raw, no error colour


def test_a_raw_volume_of_another_shape_is_refused(volumes, capsys):
    _write(volumes / "small.h5", {"raw": np.zeros((6, 32, 16), np.float32)})
    code = main(["evaluate", "--seg", f"{volumes / 'seg.h5'}:segmentation", "--gt", f"{volumes / 'test.h5'}:labels",
                 "--raw", f"{volumes / 'small.h5'}:raw", "--picture", str(volumes / "p.png")])
    assert code != 0 and "(6, 32, 16)" in capsys.readouterr().err and not (volumes / "p.png").exists()
