"""Contrastive training modes end to end on tiny data: the objective's phases, what MLflow records,
the checkpoint that comes out, and 2-process DDP with batch norm (the cross-rank key shuffle)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from melecole.checkpoint import load_model, read_checkpoint
from melecole.config import params_from_dict
from melecole.errors import MelecoleError
from melecole.losses.objective import ContrastiveObjective, ContrastivePlan
from melecole.models import UNet3D
from melecole.stages.train import train
from tests.conftest import REPO, tiny_params_dict

CONTRASTIVE = {"pairs": 24, "max_offset": [0, 4, 4], "queue_size": 64, "temperature": 0.2}


def _params(mode, **overrides):
    return tiny_params_dict(**{"train.contrastive": {"mode": mode, **CONTRASTIVE}, **overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"train.contrastive": {"mode": "pretrain", "pretrain_steps": 0}}, "pretrain_steps"),
    ({"train.contrastive": {"mode": "pretrain", "pretrain_steps": 3}}, "pretrain_steps"),
    ({"train.contrastive": {"mode": "joint", "max_offset": [16, 2, 2]}}, "max_offset"),
    ({"train.contrastive": {"mode": "joint"}, "train.workers": 1}, "workers"),
    ({"train.contrastive": {"mode": "joint", "pairs": 1}}, "pairs"),
])
def test_inconsistent_contrastive_settings_are_refused_by_name(overrides, message):
    with pytest.raises(MelecoleError, match=message):
        params_from_dict(tiny_params_dict(**overrides))


def test_plan_phases_and_the_objective_weights():
    pretrain = ContrastivePlan("pretrain", pretrain_steps=2)
    assert [pretrain.weights(step) for step in (1, 2, 3)] == [(0.0, 1.0), (0.0, 1.0), (1.0, 0.0)]
    assert [pretrain.contrastive(step) for step in (2, 3)] == [True, False]
    assert ContrastivePlan("joint", weight=0.3).weights(99) == (1.0, 0.3)
    with pytest.raises(ValueError, match="mode"):
        ContrastivePlan("supervised")

    def supervised(outputs, batch):
        return {"loss": torch.tensor(5.0), "intra": torch.tensor(1.0)}

    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(6, 3, generator=generator), dim=1)
    outputs = {"queries": queries, "keys": queries.flip(0), "queue": queries[:2]}
    batch = {"pair_labels": torch.arange(6).reshape(2, 3), "valid": torch.ones(2, 3, dtype=torch.bool)}
    early = ContrastiveObjective(supervised, 0.5, pretrain)(outputs, batch, 1)
    late = ContrastiveObjective(supervised, 0.5, pretrain)({}, batch, 3)
    joint = ContrastiveObjective(supervised, 0.5, ContrastivePlan("joint", weight=0.3))(outputs, batch, 7)
    assert early["loss"] == early["contrastive"] > 0 and early["supervised"] == 5.0
    assert late["loss"] == 5.0 and "contrastive" not in late
    assert joint["loss"].item() == pytest.approx(5.0 + 0.3 * early["contrastive"].item())
    assert 0 < joint["feature_spread"] <= 1.5


@pytest.mark.parametrize("mode", ["joint", "pretrain"])
def test_contrastive_training_logs_its_terms_and_writes_a_plain_segmentation_checkpoint(tmp_path, prepared,
                                                                                        monkeypatch, mode):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    contrastive = {"mode": mode, **CONTRASTIVE, "pretrain_steps": 3, "weight": 0.5}
    params = params_from_dict(tiny_params_dict(**{"train.steps": 6, "train.val_every": 3, "train.contrastive": contrastive,
                                                  "tracking.enabled": True, "tracking.experiment": mode}))
    out = tmp_path / "checkpoint.pt"
    summary = train(params, [prepared / "train.h5"], [prepared / "val.h5"], out, tmp_path / "run.txt", resume="never")
    assert summary["best_step"] in (3, 6)
    model, saved, _ = load_model(out)
    assert isinstance(model, UNet3D) and saved["train"]["contrastive"]["mode"] == mode
    assert not any("queue" in key or "key_" in key for key in read_checkpoint(out)["state_dict"])

    client = mlflow.MlflowClient()
    run_id = (tmp_path / "run.txt").read_text().strip()
    contrastive_steps = [m.step for m in client.get_metric_history(run_id, "train_contrastive")]
    supervised_steps = [m.step for m in client.get_metric_history(run_id, "train_supervised")]
    spread = [m.value for m in client.get_metric_history(run_id, "train_feature_spread")]
    assert supervised_steps == list(range(1, 7))
    assert contrastive_steps == (list(range(1, 7)) if mode == "joint" else [1, 2, 3])
    assert spread and all(0 < value <= 1.5 for value in spread)
    assert client.get_run(run_id).data.params["train.contrastive.mode"] == mode


@pytest.mark.slow
def test_two_process_contrastive_training_with_batch_norm(tmp_path, prepared):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(_params("joint", **{"train.steps": 4, "train.processes": 2, "train.val_every": 4,
                                                         "model.norm": "batch", "train.batch_size": 2})))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        env.pop(name, None)
    out = tmp_path / "checkpoint.pt"
    done = subprocess.run([sys.executable, "-m", "melecole.cli", "train", "--params", str(params), "--data",
                           str(prepared), "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    model, _, _ = load_model(out)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
