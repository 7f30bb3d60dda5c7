"""The CLI end to end on tiny volumes, and bad input: one clear line, exit 2, nothing left behind."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import yaml

from melecole.cli import main
from melecole.evaluate import evaluate_segmentation
from melecole.io import read_volume, write_volumes
from tests.conftest import blocks_volume, tiny_params_dict


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params_dict(**{"train.steps": 4})))
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_predict_segment_evaluate(tmp_path, prepared, params_file, capsys):
    ckpt, pred, seg = tmp_path / "out/ckpt.pt", tmp_path / "out/pred.h5", tmp_path / "out/seg.h5"
    code, out, err = _run(capsys, "train", "--params", params_file, "--data", prepared, "--out", ckpt)
    assert code == 0, err
    assert out, err
    summary = json.loads(out)
    assert summary["best_step"] in (2, 4)
    state = torch.load(ckpt, weights_only=True)
    assert state["model_args"]["base_channels"] == 4
    assert state["params"]["train"]["steps"] == 4

    assert _run(capsys, "predict", "--params", params_file, "--checkpoint", ckpt,
                "--raw", f"{prepared / 'test.h5'}:raw", "--out", pred, "--embedding", "--quiet")[0] == 0
    with h5py.File(pred) as handle:
        assert handle["embedding"].shape == (4, 16, 24, 24) and handle["embedding"].dtype == np.float16
        assert handle["affinities"].shape == (9, 16, 24, 24) and handle["affinities"].dtype == np.uint8
        assert handle["boundary"].shape == (16, 24, 24) and handle["boundary"].dtype == np.uint8
        assert 0 < handle["boundary"][...].max() <= 255

    assert _run(capsys, "segment", "--params", params_file, "--predictions", pred, "--out", seg)[0] == 0
    segmentation = read_volume(f"{seg}:segmentation")
    assert segmentation.shape == (16, 24, 24) and segmentation.dtype == np.uint64

    code, out, _ = _run(capsys, "evaluate", "--seg", f"{seg}:segmentation", "--gt",
                        f"{prepared / 'test.h5'}:labels", "--json", "--out", tmp_path / "metrics.json")
    metrics = json.loads(out)
    assert set(metrics) == {"vi_split", "vi_merge", "vi_sum", "arand", "volume", "warnings", "method", "validation"}
    # The variant chosen on validation in training is the one segment ran and evaluate names.
    assert summary["calibration"] == state["extra"]["calibration"]
    named = {name: {**scores, **({"map": "fitted"} if "map" in scores else {})}  # evaluate names a map, no levels
             for name, scores in summary["calibration"]["variants"].items()}
    assert metrics["validation"] == {**summary["calibration"], "variants": named}
    assert metrics["method"] == summary["val"]["method"] == summary["calibration"]["choice"]
    assert metrics["vi_sum"] == metrics["vi_split"] + metrics["vi_merge"]
    assert metrics["volume"] == f"{prepared / 'test.h5'}:labels"  # no source recorded: the file names it
    expected = evaluate_segmentation(segmentation, read_volume(f"{prepared / 'test.h5'}:labels"))
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics

    # A held-out volume goes through the same predict, segment and evaluate.
    raw, labels = blocks_volume(shape=(16, 24, 32), seed=5)
    write_volumes(prepared / "test-extra.h5", {"raw": raw, "labels": labels}, {"source": "extra", "split": "test"})
    held = tmp_path / "out" / "heldout"
    code, out, err = _run(capsys, "heldout", "--params", params_file, "--checkpoint", ckpt, "--data", prepared,
                          "--out", held)
    assert code == 0, err
    scores = json.loads(out)["extra"]
    assert scores["volume"] == "extra test"
    held_seg = read_volume(f"{held / 'extra' / 'segmentation.h5'}:segmentation")
    assert held_seg.shape == (16, 24, 32)
    assert read_volume(f"{held / 'extra' / 'predictions.zarr'}/boundary").shape == (16, 24, 32)
    expected = evaluate_segmentation(held_seg, labels)
    assert {k: scores[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    # No affinity head in the tiny model: its variants are skipped; the main result is not repeated.
    assert set(scores["baselines"]) == {"agglomeration-embedding", "mws-embedding", "watershed"} - {scores["method"]}
    code, out, _ = _run(capsys, "evaluate", "--seg", f"{seg}:segmentation", "--gt", f"{prepared / 'test.h5'}:labels",
                        "--held-out", held, "--json")
    assert json.loads(out)["test_extra"] == scores
    # Run again: the same job is kept; another one (here the seed) is redone.
    stamp = (held / "extra" / "metrics.json").stat().st_mtime_ns
    assert _run(capsys, "heldout", "--params", params_file, "--checkpoint", ckpt, "--data", prepared, "--out", held)[0] == 0
    assert (held / "extra" / "metrics.json").stat().st_mtime_ns == stamp
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny_params_dict(**{"train.steps": 4, "seed": 1})))
    assert _run(capsys, "heldout", "--params", other, "--checkpoint", ckpt, "--data", prepared, "--out", held)[0] == 0
    assert (held / "extra" / "metrics.json").stat().st_mtime_ns != stamp


def test_training_is_deterministic(tmp_path, prepared, params_file, capsys):
    for name in ("a.pt", "b.pt"):
        assert _run(capsys, "train", "--params", params_file, "--data", prepared, "--out", tmp_path / name)[0] == 0
    first = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    second = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def _assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("melecole ") and "error:" in lines[-1]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1]


def test_mismatched_raw_and_labels(tmp_path, params_file, capsys):
    folder = tmp_path / "bad"
    raw, labels = blocks_volume()
    write_volumes(folder / "train.h5", {"raw": raw, "labels": labels[:, :, :20]})
    write_volumes(folder / "val.h5", {"raw": raw, "labels": labels})
    code, _, err = _run(capsys, "train", "--params", params_file, "--data", folder, "--out", tmp_path / "c.pt")
    _assert_one_line_error(code, err, "train.h5", "raw (16, 24, 24)", "labels (16, 24, 20)")
    assert not (tmp_path / "c.pt").exists()


def test_missing_file_and_dataset(tmp_path, prepared, capsys):
    code, _, err = _run(capsys, "evaluate", "--seg", tmp_path / "nope.h5", "--gt", f"{prepared / 'test.h5'}:labels")
    _assert_one_line_error(code, err, "nope.h5: file not found")
    code, _, err = _run(capsys, "evaluate", "--seg", f"{prepared / 'test.h5'}:segmentation",
                        "--gt", f"{prepared / 'test.h5'}:labels")
    _assert_one_line_error(code, err, "no dataset 'segmentation'", "labels, raw")


def test_corrupt_hdf5(tmp_path, prepared, capsys):
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(300))
    code, _, err = _run(capsys, "evaluate", "--seg", corrupt, "--gt", f"{prepared / 'test.h5'}:labels",
                        "--out", tmp_path / "m.json")
    _assert_one_line_error(code, err, "corrupt.h5: not a readable HDF5 file")
    assert not (tmp_path / "m.json").exists()


def test_segmentation_and_ground_truth_shapes_differ(tmp_path, prepared, capsys):
    write_volumes(tmp_path / "seg.h5", {"segmentation": np.ones((16, 24, 23), np.uint64)})
    code, _, err = _run(capsys, "evaluate", "--seg", tmp_path / "seg.h5", "--gt", f"{prepared / 'test.h5'}:labels")
    _assert_one_line_error(code, err, "seg.h5", "(16, 24, 23)", "(16, 24, 24)")


def test_unknown_params_key(tmp_path, prepared, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_params_dict(**{"train.learning_rate": 0.1})))
    code, _, err = _run(capsys, "train", "--params", bad, "--data", prepared, "--out", tmp_path / "c.pt")
    _assert_one_line_error(code, err, "bad.yaml", "unknown key 'train.learning_rate'")
    assert not (tmp_path / "c.pt").exists()


def test_nan_loss_stops_with_the_step_and_writes_nothing(tmp_path, params_file, capsys):
    folder = tmp_path / "nan"
    raw, labels = blocks_volume()
    raw = raw.astype(np.float32)
    raw[:] = np.nan
    raw[0, 0, 0] = 1.0
    raw[0, 0, 1] = 2.0  # two finite values, so normalisation itself succeeds
    write_volumes(folder / "train.h5", {"raw": raw, "labels": labels})
    write_volumes(folder / "val.h5", {"raw": raw, "labels": labels})
    run_file = tmp_path / "run.txt"
    code, _, err = _run(capsys, "train", "--params", params_file, "--data", folder, "--out", tmp_path / "c.pt",
                        "--run-file", run_file)
    _assert_one_line_error(code, err, "non-finite loss at step 1")
    assert not (tmp_path / "c.pt").exists() and not run_file.exists()


def test_every_stage_has_help(capsys):
    for stage in ("prepare", "train", "predict", "segment", "evaluate", "report"):
        with pytest.raises(SystemExit) as exit_info:
            main([stage, "--help"])
        assert exit_info.value.code == 0
        assert "usage: melecole " + stage in capsys.readouterr().out


def test_moving_average_of_weights_is_what_gets_kept(tmp_path, prepared, capsys):
    plain, ema = tmp_path / "plain.yaml", tmp_path / "ema.yaml"
    plain.write_text(yaml.safe_dump(tiny_params_dict(**{"train.steps": 4, "train.val_every": 4})))
    ema.write_text(yaml.safe_dump(tiny_params_dict(**{"train.steps": 4, "train.val_every": 4, "train.ema_decay": 0.5})))
    for params, name in ((plain, "plain.pt"), (ema, "ema.pt")):
        assert _run(capsys, "train", "--params", params, "--data", prepared, "--out", tmp_path / name)[0] == 0
    first = torch.load(tmp_path / "plain.pt", weights_only=True)["state_dict"]
    second = torch.load(tmp_path / "ema.pt", weights_only=True)["state_dict"]
    assert set(first) == set(second)
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_affinity_head_trains_predicts_and_segments(tmp_path, prepared, capsys):
    params = tmp_path / "aff.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(**{
        "train.steps": 3, "model.affinity_head": True, "segment.agglomeration": {"source": "affinities"}})))
    ckpt, pred, seg = tmp_path / "c.pt", tmp_path / "p.h5", tmp_path / "s.h5"
    code, out, err = _run(capsys, "train", "--params", params, "--data", prepared, "--out", ckpt)
    assert code == 0, err
    assert torch.load(ckpt, weights_only=True)["model_args"]["affinity_channels"] == 9
    assert _run(capsys, "predict", "--params", params, "--checkpoint", ckpt, "--raw", f"{prepared / 'test.h5'}:raw",
                "--out", pred)[0] == 0
    with h5py.File(pred) as handle:
        predicted = handle["predicted_affinities"][...]
    assert predicted.shape == (9, 16, 24, 24) and predicted.dtype == np.uint8 and predicted.max() > 0
    assert _run(capsys, "segment", "--params", params, "--predictions", pred, "--out", seg)[0] == 0
