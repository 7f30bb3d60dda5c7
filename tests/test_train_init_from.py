"""Fine-tuning: ``train.init_from`` starts training from a checkpoint's weights (a file or a zoo model)."""

from __future__ import annotations

import pytest
import torch
import yaml

import melecole.stages.train as train_stage
from melecole.checkpoint import load_initial_weights, read_checkpoint
from melecole.cli import main
from melecole.config import load_params, params_from_dict
from melecole.distributed import DistContext
from melecole.errors import MelecoleError
from tests.conftest import REPO, tiny_params_dict


def _train(prepared, out, **overrides):
    params = params_from_dict(tiny_params_dict(**{"train.val_every": 1, **overrides}))
    train_stage.train(params, [prepared / "train.h5"], [prepared / "val.h5"], out, resume="never")
    return read_checkpoint(out)["state_dict"]


def test_training_starts_from_the_given_checkpoints_weights(tmp_path, prepared):
    first = _train(prepared, tmp_path / "first.pt", **{"train.steps": 2})
    afresh = _train(prepared, tmp_path / "afresh.pt", **{"train.steps": 1, "train.lr": 1e-12})
    # One step at a negligible learning rate: the weights stay where training started.
    tuned = _train(prepared, tmp_path / "tuned.pt",
                   **{"train.steps": 1, "train.lr": 1e-12, "train.init_from": str(tmp_path / "first.pt")})
    weights = [k for k, v in first.items() if v.is_floating_point() and v.dim() > 1]
    assert weights
    assert all(torch.allclose(tuned[k], first[k], atol=1e-6) for k in weights)
    assert not all(torch.allclose(afresh[k], first[k], atol=1e-6) for k in weights)


def test_a_checkpoint_of_another_architecture_is_refused_with_the_differences(tmp_path, prepared):
    _train(prepared, tmp_path / "first.pt", **{"train.steps": 1})
    refusal = r"first\.pt: cannot start from this checkpoint.*base_channels 4 there, 8 here"
    with pytest.raises(MelecoleError, match=refusal):
        _train(prepared, tmp_path / "other.pt",
               **{"train.steps": 1, "model.base_channels": 8, "train.init_from": str(tmp_path / "first.pt")})
    assert not (tmp_path / "other.pt").exists()


def test_the_shipped_model_loads_into_the_default_architecture():
    params = load_params(REPO / "params.yaml")
    model, _ = train_stage.build_model_for(params, torch.device("cpu"), DistContext())
    load_initial_weights(model, params.model.name, "zoo:flyem-fib")
    shipped = read_checkpoint("zoo:flyem-fib")["state_dict"]
    assert all(torch.equal(model.state_dict()[k], shipped[k]) for k in shipped)


def test_the_command_line_fine_tunes_and_refuses_another_architecture_with_exit_2(tmp_path, prepared, capsys):
    _train(prepared, tmp_path / "first.pt", **{"train.steps": 1})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(**{"train.steps": 1})))
    files = ["--train", str(prepared / "train.h5"), "--val", str(prepared / "val.h5")]
    assert main(["train", "--params", str(params), *files, "--out", str(tmp_path / "tuned.pt"),
                 "--init-from", str(tmp_path / "first.pt")]) == 0
    assert read_checkpoint(tmp_path / "tuned.pt")["params"]["train"]["init_from"] == str(tmp_path / "first.pt")
    params.write_text(yaml.safe_dump(tiny_params_dict(**{"train.steps": 1, "model.embedding_dim": 6})))
    assert main(["train", "--params", str(params), *files, "--out", str(tmp_path / "other.pt"),
                 "--init-from", str(tmp_path / "first.pt")]) == 2
    assert "embedding_dim 4 there, 6 here" in capsys.readouterr().err
