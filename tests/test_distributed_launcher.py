"""`melecole train` with train.processes=2: it re-launches itself under torchrun; killing it with
SIGKILL stops every rank; run again, it resumes, and rank 0 alone has logged each step once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from melecole.checkpoint import periodic_checkpoints, periodic_path
from tests.conftest import REPO, tiny_params_dict
from tests.processes import alive, descendants

STEPS = 80

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]


def test_killed_launcher_stops_every_rank_and_the_run_resumes_in_the_same_mlflow_run(tmp_path, prepared):
    import mlflow

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(**{
        "train.steps": STEPS, "train.processes": 2, "train.checkpoint_every": 5, "train.val_every": 1000,
        "tracking.enabled": True, "tracking.experiment": "ddp"})))
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        env.pop(name, None)
    out, run_file = tmp_path / "out" / "checkpoint.pt", tmp_path / "run.txt"
    command = [sys.executable, "-m", "melecole.cli", "train", "--params", str(params), "--data", str(prepared),
               "--out", str(out), "--run-file", str(run_file)]

    launcher = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not periodic_path(out, 5).exists():
        assert launcher.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    ranks = descendants(launcher.pid)
    assert len(ranks) >= 3  # torchrun and its two ranks
    launcher.send_signal(signal.SIGKILL)  # the launcher alone: nothing of it can clean up
    launcher.wait()
    while any(alive(pid) for pid in ranks):
        assert time.monotonic() < deadline, "ranks outlived their launcher"
        time.sleep(0.1)
    assert not out.exists() and not run_file.exists()
    resumed_from = periodic_checkpoints(out)[-1][0]

    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # printed once, by rank 0
    assert summary["processes"] == 2 and summary["resumed_from_step"] == resumed_from >= 5
    assert torch.load(out, weights_only=True)["params"]["train"]["processes"] == 2
    assert periodic_checkpoints(out) == []  # removed once the run is complete

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert [run.info.run_id for run in runs] == [run_file.read_text().strip()]  # one run, rank 0's
    for metric in ("train_loss", "lr", "train_grad_norm", "patches_per_second"):
        assert [m.step for m in client.get_metric_history(runs[0].info.run_id, metric)] == list(range(1, STEPS + 1))
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_vi_split")] == [STEPS]
