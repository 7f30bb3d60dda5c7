"""Training curves for dvc plots: fixed columns, a fresh run restarts them, a resumed one appends."""

from __future__ import annotations

import csv

from melecole.plots import TRAIN_COLUMNS, VALIDATION_COLUMNS, CurveFiles, with_vi_sum


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_rows_follow_the_logged_metrics(tmp_path):
    curves = CurveFiles(tmp_path / "plots", fresh=True)
    curves({"train_loss": 0.5, "lr": 1e-3, "train_grad_norm": 2.0}, 10)
    curves({"val_vi_split": 0.25, "val_vi_merge": 0.5, "val_arand": 0.1}, 10)
    curves({"patches_per_second": 3.0}, 11)  # nothing to plot
    assert _rows(curves.train) == [list(TRAIN_COLUMNS), ["10", "0.5", "0.001"]]
    assert _rows(curves.validation) == [list(VALIDATION_COLUMNS), ["10", "0.25", "0.5", "0.75", "0.1"]]


def test_a_fresh_run_restarts_the_files_and_a_resumed_one_appends(tmp_path):
    first = CurveFiles(tmp_path, fresh=True)
    first({"train_loss": 1.0, "lr": 0.1}, 1)
    CurveFiles(tmp_path, fresh=False)({"train_loss": 0.9, "lr": 0.1}, 2)
    assert [row[0] for row in _rows(first.train)] == ["step", "1", "2"]
    CurveFiles(tmp_path, fresh=True)({"train_loss": 0.8, "lr": 0.1}, 1)
    assert [row[0] for row in _rows(first.train)] == ["step", "1"]


def test_vi_sum_is_added_for_every_prefix():
    out = with_vi_sum({"val_vi_split": 1.0, "val_vi_merge": 0.5, "test_mws_vi_split": 2.0, "test_mws_vi_merge": 1.0,
                       "test_vi_split": 3.0, "arand": 0.2})
    assert out["val_vi_sum"] == 1.5 and out["test_mws_vi_sum"] == 3.0
    assert "test_vi_sum" not in out  # no merge to add it to
    assert out["arand"] == 0.2
