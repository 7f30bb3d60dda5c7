"""Periodic training states: what they hold, weights_only loading, the last K kept; the diagnostic
checkpoint a non-finite loss leaves; the final checkpoint's contract with predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

import melecole.stages.train as train_stage
from melecole.checkpoint import checkpoint_folder, load_model, periodic_checkpoints, read_state
from melecole.cli import main
from melecole.config import params_from_dict
from melecole.io import write_volumes
from melecole.models import build_model
from tests.conftest import blocks_volume, tiny_params_dict


@pytest.fixture
def kept_checkpoints(monkeypatch):
    # A finished run deletes its periodic checkpoints; keep them to look inside.
    monkeypatch.setattr(train_stage, "remove_checkpoints", lambda final: None)


def test_periodic_states_hold_everything_and_only_the_last_k_stay(tmp_path, prepared, kept_checkpoints):
    params = params_from_dict(tiny_params_dict(**{
        "train.steps": 6, "train.checkpoint_every": 2, "train.keep_last": 2, "train.ema_decay": 0.5,
        "train.schedule": "cosine", "train.warmup_steps": 2}))
    out = tmp_path / "out" / "model.pt"
    train_stage.train(params, [prepared / "train.h5"], [prepared / "val.h5"], out)

    assert [step for step, _ in periodic_checkpoints(out)] == [4, 6]
    assert sorted(p.name for p in checkpoint_folder(out).iterdir()) == ["model-step-000004.pt", "model-step-000006.pt"]
    newest = periodic_checkpoints(out)[-1][1]
    assert read_state(newest)["step"] == 6
    state = torch.load(newest, weights_only=True)
    assert state["step"] == 6 and state["loop"]["step"] == 6 and state["kind"] == "periodic"
    assert state["scheduler"]["last_epoch"] == 6
    assert len(state["optimizer"]["state"]) == len(list(build_model("unet3d", **state["model_args"]).parameters()))
    assert state["scaler"] == {}  # float16 scaling is off on the CPU
    assert state["ema"] is not None and int(state["ema"]["n_averaged"]) == 6
    assert state["best"]["step"] in (2, 4, 6) and set(state["best"]["state"]) == set(state["model"])
    assert [v["step"] for v in state["loop"]["validations"]] == [2, 4, 6]
    assert state["params"]["train"]["steps"] == 6 and state["fingerprint"]["world_size"] == 1
    assert state["run_id"] is None  # tracking is off in the tiny parameters
    (rng,) = state["rng"]  # one rank
    assert set(rng) == {"python", "numpy_global", "torch", "cuda", "generator"}
    # The sampler's generator, seeded from SeedSequence([seed, rank]), has moved on from its start.
    start = np.random.default_rng(np.random.SeedSequence([0, 0])).bit_generator.state
    assert rng["generator"]["bit_generator"] == "PCG64" and rng["generator"] != start

    model = build_model(state["model_name"], **state["model_args"])
    model.load_state_dict(state["model"])
    final, params_dict, extra = load_model(out)
    assert params_dict["train"]["checkpoint_every"] == 2 and extra["best_step"] == state["best"]["step"]
    assert all(torch.equal(final.state_dict()[k], state["best"]["state"][k]) for k in state["best"]["state"])


def test_a_finished_run_removes_its_periodic_checkpoints(tmp_path, prepared):
    params = params_from_dict(tiny_params_dict(**{"train.steps": 4, "train.checkpoint_every": 2}))
    out = tmp_path / "model.pt"
    summary = train_stage.train(params, [prepared / "train.h5"], [prepared / "val.h5"], out)
    assert summary["resumed_from_step"] == 0 and out.is_file()
    assert periodic_checkpoints(out) == []


def test_non_finite_loss_leaves_a_diagnostic_checkpoint_and_no_model(tmp_path, capsys):
    folder = tmp_path / "nan"
    raw, labels = blocks_volume()
    raw = raw.astype(np.float32)
    raw[:] = np.nan
    raw[0, 0, :2] = (1.0, 2.0)  # two finite values, so normalisation itself succeeds
    write_volumes(folder / "train.h5", {"raw": raw, "labels": labels})
    write_volumes(folder / "val.h5", {"raw": raw, "labels": labels})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(**{"train.steps": 4})))
    out = tmp_path / "out" / "c.pt"
    code = main(["train", "--params", str(params), "--data", str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    diagnostic = checkpoint_folder(out) / "c-nonfinite-step-000001.pt"
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert "non-finite loss at step 1" in last and str(diagnostic) in last
    assert not out.exists()
    state = torch.load(diagnostic, weights_only=True)
    assert state["kind"] == "nonfinite" and state["step"] == 1
    (report,) = state["ranks"]  # one process
    assert np.isnan(report["terms"]["loss"])
    assert tuple(report["raw"].shape) == (1, 1, 16, 16, 16) and torch.isnan(report["raw"]).any()
    build_model(state["model_name"], **state["model_args"]).load_state_dict(state["model"])


def test_training_validates_on_every_prepared_validation_volume_pooled(tmp_path, prepared, capsys):
    raw, labels = blocks_volume(shape=(16, 16, 32), block=6, seed=7)
    write_volumes(prepared / "val-extra.h5", {"raw": raw, "labels": labels})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params_dict(**{"train.steps": 4})))
    out = tmp_path / "out" / "model.pt"

    assert main(["train", "--params", str(params_file), "--data", str(prepared), "--out", str(out)]) == 0

    summary = json.loads(capsys.readouterr().out)
    params = params_from_dict(tiny_params_dict(**{"train.steps": 4}))
    model, _, extra = load_model(out)
    volumes = [train_stage.load_labelled(prepared / name) for name in ("val.h5", "val-extra.h5")]
    calibration, pooled = train_stage.final_calibration(params, model, volumes)
    assert summary["val"] == pooled and summary["calibration"] == extra["calibration"] == calibration
    assert pooled["method"] == calibration["choice"]
    configured = calibration["variants"]["agglomeration-boundary"]  # tiny params: the boundary's agglomeration
    assert extra["agglomeration_threshold"] == configured["threshold"]
    periodic = train_stage.validation_scores(params, model, volumes)
    # The same threshold as the periodic validation's; the size filter chosen after it, among
    # candidates that include segment.min_size, can only lower the pooled VI sum.
    assert configured["threshold"] == periodic["threshold"]
    assert configured["min_size"] in {*params.segment.min_size_candidates, params.segment.min_size}
    assert configured["vi_sum"] <= periodic["vi_split"] + periodic["vi_merge"] + 1e-9
    _, first_only = train_stage.final_calibration(params, model, volumes[:1])
    numbers = ("vi_split", "vi_merge", "arand")
    assert {k: first_only[k] for k in numbers} != pytest.approx({k: pooled[k] for k in numbers}, abs=1e-6)
