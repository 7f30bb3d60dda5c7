"""`melecole tune` end to end on tiny volumes: DDP trials, a failing trial, MLflow nesting, a killed
study that resumes, and `tune-report`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from melecole.cli import main
from melecole.config import Params, params_as_dict
from melecole.errors import MelecoleError
from melecole.experiments import read_overrides
from melecole.stages.tune import _close_trial_run
from melecole.tracking import Tracker, inherited_tags
from melecole.tuning.trial import TrialFiles, TrialOutcome
from melecole.tuning.space import read_space
from melecole.tuning.study import adopt_definition, open_study, trial_records
from tests.conftest import REPO, tiny_params_dict
from tests.processes import alive

pytestmark = pytest.mark.slow


def _setup(tmp_path: Path, space: dict) -> tuple[Path, Path]:
    params, space_file = tmp_path / "params.yaml", tmp_path / "space.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict()))
    space_file.write_text(yaml.safe_dump(space))
    return params, space_file


def _trials(out: Path, study: str):
    return open_study(study, f"sqlite:///{out / 'optuna.db'}", create=False).get_trials(deepcopy=False)


def test_two_trials_with_two_process_ddp(tmp_path, prepared, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params, space = _setup(tmp_path, {
        "fixed": {"train": {"processes": 2, "steps": 4, "val_every": 2}},
        "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                  "model.embedding_dim": {"type": "categorical", "choices": [4, 8]},
                  "train.loss.delta_d": {"type": "float", "low": 1.0, "high": 2.0}},
        "pruning": {"enabled": False}})
    out, best = tmp_path / "out", tmp_path / "best.yaml"
    command = ["tune", "--study", "ddp", "--trials", "2", "--space", str(space), "--params", str(params),
               "--data", str(prepared), "--out", str(out)]
    assert main([*command, "--write-best", str(best)]) == 0
    printed = capsys.readouterr().out
    assert "2 finished trials: 2 complete, 0 pruned, 0 failed" in printed

    trials = _trials(out, "ddp")
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    for trial in trials:
        folder = out / "ddp" / f"trial-{trial.number:04d}"
        checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
        assert checkpoint["params"]["train"]["processes"] == 2
        assert checkpoint["params"]["train"]["lr"] == trial.params["train.lr"]
        assert '"processes": 2' in (folder / "train.log").read_text()
        metrics = json.loads((folder / "metrics.json").read_text())
        assert trial.values == [metrics["vi_split"], metrics["vi_merge"]]
        assert [step for step, _, _ in trial.user_attrs["validation"]] == [2, 4]
        assert [json.loads(line)["step"] for line in (folder / "validation.jsonl").read_text().splitlines()] == [2, 4]
    rows = list(csv.DictReader((out / "ddp" / "pareto.csv").open()))
    assert [row["trial"] for row in rows] == ["0", "1"] and any(row["on_front"] == "True" for row in rows)
    assert (out / "ddp" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    overrides = read_overrides(best, params)
    assert overrides["train"]["processes"] == 2 and set(overrides["model"]) == {"embedding_dim"}

    # The budget is reached: running again only reports, and so does tune-report.
    assert main(command) == 0
    assert "2 finished trials" in capsys.readouterr().out and len(_trials(out, "ddp")) == 2
    assert main(["tune-report", "--study", "ddp", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "VI split" in table and "model.embedding_dim" in table


def test_a_failing_trial_is_recorded_and_every_trial_nests_under_the_study_run(tmp_path, prepared, monkeypatch,
                                                                             capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params, space = _setup(tmp_path, {
        "fixed": {"train": {"steps": 2, "val_every": 2}, "tracking": {"enabled": True, "experiment": "tune-test"}},
        "space": {"train.device": {"type": "categorical", "choices": ["cpu", "bogus"]},
                  "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}},
        "enqueue": [{"train.device": "bogus", "train.lr": 0.002}, {"train.device": "cpu", "train.lr": 0.002},
                    {"train.device": "cpu", "train.lr": 0.004}]})
    out = tmp_path / "out"
    command = ["tune", "--study", "nest", "--space", str(space), "--params", str(params), "--data", str(prepared),
               "--out", str(out)]
    assert main([*command, "--trials", "2"]) == 0
    assert "trial 0: failed: " in capsys.readouterr().out
    assert main([*command, "--trials", "3"]) == 0  # resumed: one more trial, under the same study run
    capsys.readouterr()

    trials = _trials(out, "nest")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "train.device 'bogus'" in trials[0].user_attrs["error"]
    rows = list(csv.DictReader((out / "nest" / "pareto.csv").open()))
    assert rows[0]["state"] == "FAIL" and "bogus" in rows[0]["error"]

    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tune-test").experiment_id])
    parents = [r for r in runs if r.data.tags.get("melecole_role") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna_study"] == "nest"
    assert "best_vi_sum" in parent.data.metrics
    children = sorted((r for r in runs if r is not parent), key=lambda r: r.data.tags["optuna_trial"])
    assert [r.data.tags["optuna_trial"] for r in children] == ["1", "2"]
    for run, trial in zip(children, trials[1:]):
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["optuna_study"] == "nest"
        assert run.data.tags["mlflow.runName"] == f"nest-trial-{trial.number:04d}"
        assert run.info.status == "FINISHED"
        assert float(run.data.params["train.lr"]) == trial.params["train.lr"]
        assert run.data.metrics["objective_vi_split"] == pytest.approx(trial.values[0])
        assert run.data.metrics["objective_vi_merge"] == pytest.approx(trial.values[1])


def test_a_pruned_trials_run_is_found_by_its_tags_and_killed(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MELECOLE_MLFLOW_TAGS", json.dumps({"optuna_study": "p", "optuna_trial": "7"}))
    monkeypatch.setenv("MELECOLE_MLFLOW_PARENT_RUN", "0123")
    started = Tracker.start("prune-test", {"train": {"lr": 0.1}})  # as training does, then it is stopped
    params = {"tracking": {"experiment": "prune-test"}}
    _close_trial_run(TrialFiles(tmp_path / "trial-0007"), params, "p", 7, TrialOutcome("pruned", pruned_at=4), print)
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(started.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["mlflow.runName"] == "p-trial-0007" and run.data.tags["mlflow.parentRunId"] == "0123"


def test_inherited_tags():
    assert inherited_tags({}) == {}
    assert inherited_tags({"MELECOLE_MLFLOW_PARENT_RUN": "abc", "MELECOLE_MLFLOW_TAGS": '{"optuna_trial": 3}'}) == {
        "mlflow.parentRunId": "abc", "optuna_trial": "3"}
    with pytest.raises(MelecoleError, match="MELECOLE_MLFLOW_TAGS: not valid JSON"):
        inherited_tags({"MELECOLE_MLFLOW_TAGS": "{"})


def test_mistakes_are_reported_before_any_trial(tmp_path, prepared, capsys):
    params, space = _setup(tmp_path, {"space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}})
    base = ["--space", str(space), "--params", str(params), "--out", str(tmp_path / "out")]
    cases = [(["--study", "a/b", "--trials", "1", "--data", str(prepared)], "--study 'a/b'"),
             (["--study", "s", "--trials", "0", "--data", str(prepared)], "--trials 0"),
             (["--study", "s", "--trials", "1", "--data", str(tmp_path / "none")], "needs train*.h5 and val.h5"),
             (["--study", "s", "--trials", "1", "--data", str(prepared), "--reference", "x"], "LABEL=metrics.json")]
    for arguments, message in cases:
        assert main(["tune", *arguments, *base]) == 2
        assert message in capsys.readouterr().err
    assert main(["tune-report", "--study", "s", "--out", str(tmp_path / "none")]) == 2
    assert "no study database" in capsys.readouterr().err
    # Joining a study with another search space is refused.
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}))
    study = open_study("s", f"sqlite:///{tmp_path / 'out.db'}")
    adopt_definition(study, read_space(space, params_as_dict(Params())).definition(), str(space))
    adopt_definition(study, read_space(space, params_as_dict(Params())).definition(), str(space))
    with pytest.raises(MelecoleError, match="was created with other 'fixed' or 'space' sections"):
        adopt_definition(study, read_space(other, params_as_dict(Params())).definition(), str(other))


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_study_resumes_and_retries_the_interrupted_trial(tmp_path, prepared):
    params, space = _setup(tmp_path, {
        "fixed": {"train": {"steps": 12, "val_every": 2}},
        "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "pruning": {"enabled": False}})
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "melecole.cli", "tune", "--study", "killed", "--trials", "2", "--space",
               str(space), "--params", str(params), "--data", str(prepared), "--out", str(out), "--heartbeat", "1"]
    worker = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (out / "killed" / "trial-0000" / "validation.jsonl").is_file():
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    training = _children(worker.pid)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    while any(alive(pid) for pid in training):
        assert time.monotonic() < deadline, "the trial's training outlived its worker"
        time.sleep(0.1)
    assert [t.state.name for t in _trials(out, "killed")] == ["RUNNING"]

    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _trials(out, "killed")
    states = {t.number: t.state.name for t in trials}
    assert states[0] == "FAIL" and list(states.values()).count("COMPLETE") == 2 and len(trials) == 3
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state.name == "COMPLETE" and retry.params == trials[0].params
    records = trial_records(open_study("killed", f"sqlite:///{out / 'optuna.db'}", create=False))
    assert sorted(r.number for r in records) == sorted(n for n, s in states.items() if s == "COMPLETE")
    assert "2 finished trials: 2 complete" in done.stdout
