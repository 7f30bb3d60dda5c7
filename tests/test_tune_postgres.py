"""Two `melecole tune` workers share one study in a real PostgreSQL server: every trial runs once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from melecole.tuning.study import open_study
from tests.conftest import REPO, tiny_params_dict
from tests.postgres_server import postgres_url  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

TRIALS = 4


def test_two_workers_share_one_study_without_duplicates(tmp_path, prepared, postgres_url):  # noqa: F811
    params, space = tmp_path / "params.yaml", tmp_path / "space.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict()))
    space.write_text(yaml.safe_dump({
        "fixed": {"train": {"steps": 4, "val_every": 2}},
        "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                  "model.embedding_dim": {"type": "categorical", "choices": [4, 8]}},
        "pruning": {"enabled": False}}))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "melecole.cli", "tune", "--study", "shared", "--trials", str(TRIALS),
               "--space", str(space), "--params", str(params), "--data", str(prepared), "--out", str(out),
               "--storage", postgres_url, "--heartbeat", "5"]
    workers = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    results = [worker.communicate(timeout=400) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, results):
        assert worker.returncode == 0, stderr[-3000:]
        assert f"{TRIALS} finished trials: {TRIALS} complete" in stdout

    trials = open_study("shared", postgres_url, create=False).get_trials(deepcopy=False)
    counted = [t for t in trials if not t.user_attrs.get("surplus")]
    assert len(counted) == TRIALS and all(t.state.name == "COMPLETE" for t in counted)
    assert sorted(t.number for t in counted) == sorted({t.number for t in counted})
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in counted} == {str(w.pid) for w in workers}
    folders = sorted(p.name for p in (out / "shared").iterdir() if p.is_dir())
    assert folders == [f"trial-{t.number:04d}" for t in sorted(counted, key=lambda t: t.number)]
    for trial in counted:
        assert (out / "shared" / f"trial-{trial.number:04d}" / "metrics.json").is_file()
