"""`dvc repro`, `dvc exp run -S`, `dvc exp show` and `dvc metrics diff` on a copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from melecole.config import params_as_dict, params_from_dict
from tests.conftest import REPO, tiny_params_dict

pytestmark = pytest.mark.slow


def _sh(cwd: Path, env: dict, *command: str) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def project(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in ("melecole", "datasets"):
        shutil.copytree(REPO / item, root / item, ignore=ignore)
    for item in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / item, root / item)
    (root / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    params = tiny_params_dict(**{
        "data.dataset": "synthetic",
        "data.bundled_root": "datasets",
        "data.synthetic": {"shape": [16, 48, 48], "neurites": 8},
        "train.augment": {"anisotropic": True},
        "tracking.enabled": True,
    })
    # DVC wants every parameter a stage names to be present: write the complete, validated set.
    (root / "params.yaml").write_text(yaml.safe_dump(params_as_dict(params_from_dict(params))))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.org"
    _sh(root, env, "git", "init", "-q")
    _sh(root, env, "git", "add", "-A")
    _sh(root, env, "git", "commit", "-qm", "baseline")
    return root, env


def test_repro_is_reproducible_and_experiments_are_compared(project):
    root, env = project
    _sh(root, env, "dvc", "repro")
    first = json.loads((root / "metrics.json").read_text())
    assert set(first) == {"vi_split", "vi_merge", "vi_sum", "arand", "baselines", "volume", "warnings", "method",
                          "validation"}
    assert first["method"] == first["validation"]["choice"]
    assert first["volume"] == "synthetic test"
    curves = (root / "outputs" / "plots" / "validation.csv").read_text().splitlines()
    assert curves[0] == "step,vi_split,vi_merge,vi_sum,arand" and len(curves) >= 2, curves
    plotted = json.loads(_sh(root, env, "dvc", "plots", "show", "--json"))
    assert not plotted.get("errors"), plotted.get("errors")
    assert any("validation.csv" in name and rows for name, rows in plotted["data"].items()), plotted["data"].keys()
    # No affinity head here: its variants are skipped, and the main result is not repeated.
    assert set(first["baselines"]) == {"agglomeration-embedding", "mws-embedding", "watershed"} - {first["method"]}
    assert (root / "dvc.lock").is_file()
    _sh(root, env, "git", "add", "-A")
    _sh(root, env, "git", "commit", "-qm", "baseline results")
    status = _sh(root, env, "dvc", "status")
    assert status.strip() == "Data and pipelines are up to date.", status  # no warning a user must decode

    _sh(root, env, "dvc", "exp", "run", "-n", "faster", "-S", "train.lr=0.01")
    shown = json.loads(_sh(root, env, "dvc", "exp", "show", "--json"))
    experiments = [exp for rev in shown for exp in (rev.get("experiments") or [])]
    names = {exp.get("name") for exp in experiments}
    assert "faster" in names
    faster = next(exp for exp in experiments if exp.get("name") == "faster")
    revision = faster["revs"][0]["data"]
    metrics = revision["metrics"]["metrics.json"]["data"]
    assert {"vi_split", "vi_merge", "arand"} <= set(metrics)
    assert revision["params"]["params.yaml"]["data"]["train"]["lr"] == 0.01

    output = _sh(root, env, "dvc", "metrics", "diff", "--all", "--json")
    diff = json.loads(output)["metrics.json"]
    assert {"vi_split", "vi_merge", "arand", "baselines.watershed.vi_split"} <= set(diff)
    assert diff["vi_split"]["new"] == pytest.approx(metrics["vi_split"])
    assert diff["vi_split"]["old"] == pytest.approx(first["vi_split"])

    # A retraining whose segmentation comes out byte-identical (only logging changed): DVC skips
    # segment, but the new MLflow run must still receive its test metrics. DVC reports the skip as
    # "didn't change" (the lock matches) or as "is cached" (its run cache holds the baseline's
    # segment, e.g. while the workspace still carries the applied 'faster' results).
    output = _sh(root, env, "dvc", "exp", "run", "-n", "chatty", "-S", "train.log_every=2")
    assert "Running stage 'predict'" in output, output
    assert "Running stage 'segment'" not in output, output
    assert ("Stage 'segment' didn't change" in output or "Stage 'segment' is cached" in output), output
    assert "Running stage 'evaluate'" in output, output

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("melecole")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3
    assert all("test_vi_split" in run.data.metrics and run.info.status == "FINISHED" for run in runs)
    assert sorted(run.data.tags.get("dvc_experiment", "") for run in runs) == ["", "chatty", "faster"]
    assert len({run.info.run_name for run in runs}) == 3  # every run its own name
    assert any(run.info.run_name.startswith("faster-") for run in runs)
    assert all("test_vi_sum" in run.data.metrics for run in runs)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    commits = {run.data.tags["git_commit"] for run in runs}
    assert len(commits) == 2  # the baseline commit, then the commit with the results (experiments too)
