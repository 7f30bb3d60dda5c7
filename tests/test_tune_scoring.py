"""A trial is judged on every validation volume of the prepared folder, pooled."""

from __future__ import annotations

import json

import pytest

import melecole.stages.train as train_stage
from melecole.config import params_from_dict
from melecole.evaluate import evaluate_pooled
from melecole.io import read_volume, write_volumes
from melecole.tuning.trial import score_validation
from tests.conftest import blocks_volume, tiny_params_dict


def test_trial_scores_all_validation_volumes_pooled(tmp_path, prepared):
    raw, labels = blocks_volume(shape=(16, 16, 32), block=6, seed=7)
    extra = prepared / "val-extra.h5"
    write_volumes(extra, {"raw": raw, "labels": labels})
    params = params_from_dict(tiny_params_dict(**{"train.steps": 2}))
    checkpoint = tmp_path / "model.pt"
    train_stage.train(params, [prepared / "train.h5"], [prepared / "val.h5", extra], checkpoint)
    both, alone = tmp_path / "both", tmp_path / "alone"
    both.mkdir()
    alone.mkdir()

    metrics = score_validation(params, checkpoint, [prepared / "val.h5", extra], both)
    score_validation(params, checkpoint, [extra], alone)

    expected = evaluate_pooled([
        (read_volume(f"{both / 'segmentation.h5'}:segmentation"), read_volume(f"{prepared / 'val.h5'}:labels")),
        (read_volume(f"{alone / 'segmentation.h5'}:segmentation"), labels)])
    assert metrics == pytest.approx(expected, abs=1e-12)
    assert json.loads((both / "metrics.json").read_text()) == pytest.approx(expected, abs=1e-12)
    assert sorted(p.name for p in both.iterdir()) == ["metrics.json", "segmentation.h5"]
