"""Contrastive training modes end to end on tiny data: the objective's phases, the (volume, label)
identities from the sampler into the queue and the loss, what MLflow records, the checkpoint that
comes out, and 2-process DDP with batch norm (the cross-rank key shuffle)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from melecole.checkpoint import load_model, read_checkpoint
from melecole.config import params_from_dict
from melecole.data.pairs import ViewSampler
from melecole.errors import MelecoleError
from melecole.losses import EmbeddingLoss, MultitaskLoss
from melecole.losses.contrastive import info_nce
from melecole.losses.objective import ContrastiveObjective, ContrastivePlan
from melecole.models import UNet3D, build_model
from melecole.models.moco import MoCo
from melecole.stages.train import train
from melecole.training import StepOptions, make_batch, optimizer_step
from tests.conftest import REPO, blocks_volume, tiny_params_dict

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


def _two_volumes():
    # Label ids beyond float32's integers in volume 1, so a cast of the identities would show.
    volumes = []
    for volume, offset in enumerate((0, 2 ** 40)):
        raw, labels = blocks_volume(shape=(12, 12, 12), block=4, seed=volume)
        volumes.append(((raw.astype(np.float32) - 128) / 64, labels + np.uint64(offset)))
    return volumes


def test_volume_ids_flow_from_the_sampler_through_the_batch_into_the_queue_and_the_loss():
    volumes = _two_volumes()
    sampler = ViewSampler(volumes, (8, 8, 8), (2, 2, 2), 6, np.random.default_rng(0), min_labelled=0.5)
    batch = make_batch(sampler, 6, torch.device("cpu"))
    identity = batch["pair_identity"]
    assert identity.shape == (6, 6, 2) and identity.dtype == torch.long
    assert set(identity[..., 0].unique().tolist()) == {0, 1}
    for sample in identity:
        volume = int(sample[0, 0])
        assert (sample[:, 0] == volume).all()
        assert set(sample[:, 1].tolist()) <= set(volumes[volume][1].astype(np.int64).ravel().tolist())

    torch.manual_seed(0)
    moco = MoCo(build_model("unet3d", base_channels=4, embedding_dim=4, downsample=[[2, 2, 2]]), 4, 3, 64).train()
    objective = ContrastiveObjective(MultitaskLoss(EmbeddingLoss()), 0.2, ContrastivePlan("joint", weight=0.5))
    seen = []

    def loss_fn(outputs, batch, step):
        seen.append((outputs, batch))
        return objective(outputs, batch, step)

    optimizer = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.0)
    options = StepOptions(contrastive=objective.plan)
    for step in (1, 2):
        optimizer_step(moco, loss_fn, sampler, optimizer, 3, torch.device("cpu"), None, options, step)
    (_, first), (outputs, second) = seen
    valid = first["valid"].reshape(-1)
    assert torch.equal(outputs["queue_identity"], first["pair_identity"].reshape(-1, 2)[valid])
    count = int(valid.sum())
    assert torch.equal(moco.queue_identity[count:count + int(second["valid"].sum())],
                       second["pair_identity"].reshape(-1, 2)[second["valid"].reshape(-1)])
    arguments = (outputs["queries"], outputs["keys"], second["pair_labels"].reshape(-1), outputs["queue"], 0.2,
                 second["valid"].reshape(-1))
    expected = info_nce(*arguments, second["pair_identity"].reshape(-1, 2), outputs["queue_identity"])
    assert objective(outputs, second, 2)["contrastive"].item() == pytest.approx(expected.item(), rel=1e-6)
    # The regions overlap: queued keys of the queries' own neurons were there to exclude.
    assert expected.item() < info_nce(*arguments).item()


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
