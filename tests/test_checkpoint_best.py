"""The final checkpoint holds the weights of the validation with the lowest VI sum: scripted
validation scores make the best step known, so keeping any other step's weights shows."""

from __future__ import annotations

import torch

import melecole.stages.train as train_stage
from melecole.checkpoint import load_model
from melecole.config import params_from_dict
from tests.conftest import tiny_params_dict


def test_the_checkpoint_keeps_the_weights_of_the_validation_with_the_lowest_vi_sum(tmp_path, prepared, monkeypatch):
    # Validation VI sums scripted per validation (steps 2, 4, 6): the best, step 4, is not the last.
    scripted = [(1.2, 0.8), (0.3, 0.2), (0.6, 0.4)]
    validated = []

    def scores(params, model, volumes, augment="none", picture=None):
        validated.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        split, merge = scripted[len(validated) - 1] if len(validated) <= len(scripted) else (0.5, 0.5)
        return {"vi_split": split, "vi_merge": merge, "arand": 0.1, "threshold": 0.5}

    monkeypatch.setattr(train_stage, "validation_scores", scores)
    params = params_from_dict(tiny_params_dict(**{"train.steps": 6, "train.val_every": 2, "train.lr": 0.01}))
    out = tmp_path / "model.pt"
    summary = train_stage.train(params, [prepared / "train.h5"], [prepared / "val.h5"], out)

    assert len(validated) >= 3  # steps 2, 4 and 6 (the final calibration may score again)
    final, _, extra = load_model(out)
    assert summary["best_step"] == extra["best_step"] == 4
    weights = final.state_dict()
    assert all(torch.equal(weights[k], validated[1][k]) for k in weights)
    assert not all(torch.equal(weights[k], validated[2][k]) for k in weights)  # not the last step's
