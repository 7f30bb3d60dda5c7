"""The Pareto front of a search: table, CSV, PNG, the best trial as a params.yaml override, references."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from melecole.errors import MelecoleError
from melecole.experiments import dvc_set_arguments, read_overrides
from melecole.stages.tune import parse_reference
from melecole.tuning.pareto import TrialRecord, best, format_front, front, plot, summary_line, write_best, write_csv
from tests.conftest import tiny_params_dict

RECORDS = [
    TrialRecord(0, "COMPLETE", {"train.lr": 0.001, "model.embedding_dim": 16}, 0.5, 0.25, 0.2, on_front=True,
                last_validation=(0.6, 0.3)),
    TrialRecord(1, "COMPLETE", {"train.lr": 0.002, "model.embedding_dim": 8}, 0.2, 0.5, 0.3, on_front=True),
    TrialRecord(2, "COMPLETE", {"train.lr": 0.004, "model.embedding_dim": 8}, 0.6, 0.6, 0.4),
    TrialRecord(3, "PRUNED", {"train.lr": 0.0001, "model.embedding_dim": 32}, pruned_at=150,
                last_validation=(1.5, 1.0)),
    TrialRecord(4, "FAIL", {"train.lr": 0.01, "model.embedding_dim": 8}, error="Traceback\nRuntimeError: boom"),
]


def test_front_best_and_table():
    assert [r.number for r in front(RECORDS)] == [1, 0]  # by VI split
    assert best(RECORDS).number == 1                      # VI sum 0.70 against trial 0's 0.75
    lines = format_front(RECORDS).splitlines()
    assert lines[0].split() == ["trial", "VI", "split", "VI", "merge", "VI", "sum", "arand", "train.lr",
                                "model.embedding_dim"]
    assert lines[1].split() == ["1", "0.2000", "0.5000", "0.7000", "0.3000", "0.002", "8"]
    assert lines[2].split() == ["0", "0.5000", "0.2500", "0.7500", "0.2000", "0.001", "16"]
    assert summary_line(RECORDS) == "5 finished trials: 3 complete, 1 pruned, 1 failed; 2 on the Pareto front"
    assert best([RECORDS[2]]) is None and "(no completed trial yet)" in format_front([])


def test_a_tie_on_the_vi_sum_goes_to_the_earlier_trial():
    records = [TrialRecord(4, "COMPLETE", {}, 0.5, 0.25, on_front=True), TrialRecord(2, "COMPLETE", {}, 0.25, 0.5,
                                                                                     on_front=True)]
    assert best(records).number == 2


def test_csv_has_every_finished_trial_and_the_front(tmp_path):
    path = tmp_path / "pareto.csv"
    write_csv(RECORDS, path)
    rows = list(csv.DictReader(path.open()))
    assert [(r["trial"], r["state"], r["on_front"]) for r in rows] == [
        ("0", "COMPLETE", "True"), ("1", "COMPLETE", "True"), ("2", "COMPLETE", "False"), ("3", "PRUNED", "False"),
        ("4", "FAIL", "False")]
    assert float(rows[0]["vi_sum"]) == pytest.approx(0.75) and rows[3]["vi_split"] == ""
    assert rows[3]["pruned_at_step"] == "150" and rows[4]["error"] == "RuntimeError: boom"
    assert float(rows[1]["train.lr"]) == 0.002 and rows[2]["model.embedding_dim"] == "8"


def test_png_is_written(tmp_path):
    path = tmp_path / "pareto.png"
    plot(RECORDS, path, "study x", {"supervised": (0.4, 0.4)})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot([], tmp_path / "empty.png", "no trials")
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_write_best_is_an_override_for_dvc_exp_run(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict()))
    path = tmp_path / "best.yaml"
    overrides = write_best(RECORDS[0], {"train": {"steps": 20}}, path, "demo")
    assert overrides == {"train": {"steps": 20, "lr": 0.001}, "model": {"embedding_dim": 16}}
    assert path.read_text().startswith("# Study demo, trial 0:")
    assert read_overrides(path, params) == overrides
    assert dvc_set_arguments(overrides) == ["-S", "train.steps=20", "-S", "train.lr=0.001",
                                            "-S", "model.embedding_dim=16"]


def test_references(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"vi_split": 0.25, "vi_merge": 1.5, "arand": 0.2}))
    assert parse_reference(f"baseline={metrics}") == ("baseline", (0.25, 1.5))
    with pytest.raises(MelecoleError, match="expected LABEL=metrics.json"):
        parse_reference(str(metrics))
    with pytest.raises(MelecoleError, match="reference metrics file not found"):
        parse_reference(f"x={tmp_path / 'none.json'}")
    metrics.write_text("{}")
    with pytest.raises(MelecoleError, match="numbers vi_split and vi_merge"):
        parse_reference(f"x={metrics}")
