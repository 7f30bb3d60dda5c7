"""Resume: a SIGKILLed training continues to the very weights of an uninterrupted run, in the same
MLflow run; which checkpoint a new invocation continues from, and when it starts afresh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from melecole.checkpoint import periodic_checkpoints, periodic_path, save_state
from melecole.errors import MelecoleError
from melecole.resume import differences, find_resumable, fingerprint
from tests.conftest import REPO, tiny_params_dict
from tests.processes import descendants, wait_gone

STEPS = 40


def _start(tmp_path, params, data, out, store):
    """The training as a subprocess whose stderr goes to a file: a pipe would keep a caller waiting
    for as long as any process that inherited it lives."""
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / store}")
    command = [sys.executable, "-m", "melecole.cli", "train", "--params", str(params), "--data", str(data),
               "--out", str(out), "--run-file", str(out.with_suffix(".run"))]
    log = tmp_path / f"{store}.{time.monotonic_ns()}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    process.log = log
    return process


def _finish(process, seconds: float) -> str:
    """Waits for ``process`` (killing it if it overruns) and returns its stderr."""
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return process.log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("variant", [
    {"train.workers": 0},
    {"train.workers": 1},
    # The MoCo queue, momentum network and view sampling resume exactly too.
    {"train.workers": 0, "train.contrastive": {"mode": "joint", "pairs": 16, "max_offset": [0, 4, 4], "queue_size": 40}},
], ids=["in-process", "loader-worker", "contrastive"])
def test_killed_training_resumes_bit_for_bit_in_the_same_mlflow_run(tmp_path, prepared, variant):
    import mlflow

    params = tmp_path / "params.yaml"
    # One thread: the same float operations in the same order in every process. Validation only
    # after the last step, so the kept (best) weights are the final ones.
    params.write_text(yaml.safe_dump(tiny_params_dict(**{
        "train.steps": STEPS, "train.checkpoint_every": 5, "train.val_every": 1000, "train.threads": 1,
        **variant,
        "train.ema_decay": 0.5, "train.schedule": "cosine_restarts", "train.warmup_steps": 3,
        "train.restart_steps": 10, "tracking.enabled": True, "tracking.experiment": "resume"})))
    reference = _start(tmp_path, params, prepared, tmp_path / "reference" / "checkpoint.pt", "reference.db")
    out = tmp_path / "out" / "checkpoint.pt"
    killed = _start(tmp_path, params, prepared, out, "mlflow.db")
    deadline = time.monotonic() + 240
    while not periodic_path(out, 10).exists():
        if killed.poll() is not None or time.monotonic() > deadline:
            pytest.fail(_finish(killed, 1)[-3000:])
        time.sleep(0.005)
    linux = sys.platform.startswith("linux")
    workers = descendants(killed.pid) if linux else set()
    assert not linux or len(workers) >= variant["train.workers"]  # the DataLoader's worker processes
    killed.send_signal(signal.SIGKILL)  # the trainer alone, as the OOM killer picks one process
    _finish(killed, 60)
    assert killed.returncode == -signal.SIGKILL
    # Its loader workers die with it rather than live on as orphans.
    assert not wait_gone(workers, 60), "a DataLoader worker outlived its killed training"
    assert not out.exists()
    resumed_from = periodic_checkpoints(out)[-1][0]
    assert 10 <= resumed_from < STEPS

    resumed = _start(tmp_path, params, prepared, out, "mlflow.db")
    err = _finish(resumed, 300)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resuming from {periodic_path(out, resumed_from)} at step {resumed_from}" in err
    err = _finish(reference, 300)
    assert reference.returncode == 0, err[-3000:]

    first = torch.load(tmp_path / "reference" / "checkpoint.pt", weights_only=True)["state_dict"]
    second = torch.load(out, weights_only=True)["state_dict"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert [run.info.run_id for run in runs] == [out.with_suffix(".run").read_text().strip()]
    assert runs[0].data.tags["resumed_at_step"] == str(resumed_from)
    for metric in ("train_loss", "lr", "train_grad_norm"):
        assert [m.step for m in client.get_metric_history(runs[0].info.run_id, metric)] == list(range(1, STEPS + 1))
    reference_client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'reference.db'}")
    reference_run = reference_client.search_runs([reference_client.get_experiment_by_name("resume").experiment_id])[0]
    losses = [m.value for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert losses == [m.value for m in reference_client.get_metric_history(reference_run.info.run_id, "train_loss")]


def _fingerprint(tmp_path, **overrides):
    files = [tmp_path / "train.h5", tmp_path / "val.h5"]
    for path in files:
        if not path.exists():
            path.write_bytes(b"volume")
    return fingerprint(tiny_params_dict(**overrides), files, world_size=1)


def _write(out, step, current):
    save_state(periodic_path(out, step), {"step": step, "fingerprint": current})


def test_the_newest_compatible_checkpoint_is_resumed(tmp_path):
    out = tmp_path / "outputs" / "checkpoint.pt"
    current = _fingerprint(tmp_path)
    for step in (5, 10):
        _write(out, step, current)
    _write(tmp_path / "outputs" / "other.pt", 15, current)  # another output's run: not this one's
    state, note = find_resumable(out, current)
    assert state["step"] == 10 and "at step 10" in note
    assert find_resumable(out, current, "always")[0]["step"] == 10


def test_a_changed_configuration_starts_afresh_or_refuses_to_resume(tmp_path):
    out = tmp_path / "checkpoint.pt"
    _write(out, 5, _fingerprint(tmp_path))
    changed = _fingerprint(tmp_path, **{"train.lr": 0.01})
    assert differences(_fingerprint(tmp_path), changed) == ["train.lr"]
    with pytest.raises(MelecoleError, match=r"different train\.lr"):
        find_resumable(out, changed, "always")
    assert periodic_checkpoints(out)  # an explicit --resume deletes nothing
    state, note = find_resumable(out, changed, "auto")
    assert state is None and "starting afresh" in note
    assert periodic_checkpoints(out) == []  # stale states of this output are gone


def test_other_processes_or_files_are_incompatible_and_fresh_discards(tmp_path):
    out = tmp_path / "checkpoint.pt"
    current = _fingerprint(tmp_path)
    two = {**current, "world_size": 2}
    assert differences(current, two) == ["processes (1 then, 2 now)"]
    time.sleep(0.01)
    (tmp_path / "train.h5").write_bytes(b"another volume")
    assert differences(current, _fingerprint(tmp_path)) == ["training files"]
    _write(out, 5, current)
    assert find_resumable(out, current, "never") == (None, None)
    assert periodic_checkpoints(out) == []
    with pytest.raises(MelecoleError, match="no checkpoint of checkpoint to resume from"):
        find_resumable(out, current, "always")
    assert find_resumable(out, current, "auto") == (None, None)


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    out = tmp_path / "checkpoint.pt"
    current = _fingerprint(tmp_path)
    _write(out, 5, current)
    periodic_path(out, 10).write_bytes(b"truncated")
    assert find_resumable(out, current)[0]["step"] == 5
