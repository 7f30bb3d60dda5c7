"""recalibrate: a checkpoint's segmentation knobs chosen again on labelled volumes, weights unchanged."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from melecole.checkpoint import read_checkpoint
from melecole.cli import main
from melecole.config import params_from_dict
from melecole.io import open_container
from melecole.stages.train import final_calibration, load_labelled
from tests.conftest import tiny_params_dict
from tests.predict_helpers import random_checkpoint


def test_a_checkpoint_without_a_calibration_gets_one_and_predict_and_segment_follow_it(tmp_path, prepared, capsys):
    params = params_from_dict(tiny_params_dict())
    old = random_checkpoint(params, tmp_path / "old.pt")  # as before calibration existed: a threshold only
    assert "calibration" not in read_checkpoint(old)["extra"]
    params_file = tmp_path / "params.yaml"
    search = {"segment.mws_bias_candidates": [-0.1, 0.0, 0.1], "segment.choices": ["mws-embedding", "agglomeration-embedding"]}
    params_file.write_text(yaml.safe_dump(tiny_params_dict(**search)))
    new = tmp_path / "new.pt"

    assert main(["recalibrate", "--params", str(params_file), "--checkpoint", str(old), "--data", str(prepared),
                 "--out", str(new)]) == 0
    printed = json.loads(capsys.readouterr().out)
    before, after = read_checkpoint(old), read_checkpoint(new)  # weights_only loads
    assert all(torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"])
    calibration = after["extra"]["calibration"]
    assert printed["calibration"] == calibration and printed["volumes"] == [str(prepared / "val.h5")]
    assert set(calibration["variants"]) == {"mws-embedding", "agglomeration-embedding", "agglomeration-boundary"}
    assert calibration["choice"] in ("mws-embedding", "agglomeration-embedding")
    assert calibration["variants"]["mws-embedding"]["bias"] in (-0.1, 0.0, 0.1)
    assert after["params"]["segment"]["choices"] == ["mws-embedding", "agglomeration-embedding"]
    # The same as calibrating in training on these volumes with these parameters.
    trained = params_from_dict(tiny_params_dict(**search))
    model_calibration, final = final_calibration(trained, _model(new), [load_labelled(prepared / "val.h5")])
    assert model_calibration == calibration and after["extra"]["val_vi_split"] == final["vi_split"]

    predictions, segmentation = tmp_path / "pred.h5", tmp_path / "seg.h5"
    assert main(["predict", "--params", str(params_file), "--checkpoint", str(new), "--raw",
                 f"{prepared / 'test.h5'}:raw", "--out", str(predictions), "--quiet"]) == 0
    assert main(["segment", "--params", str(params_file), "--predictions", str(predictions), "--out",
                 str(segmentation)]) == 0
    capsys.readouterr()
    with open_container(segmentation) as container:
        assert container.attrs["method"] == calibration["choice"]


def _model(path):
    from melecole.checkpoint import load_model

    return load_model(path)[0]


def test_recalibrate_needs_labelled_volumes(tmp_path, capsys):
    params = params_from_dict(tiny_params_dict())
    old = random_checkpoint(params, tmp_path / "old.pt")
    assert main(["recalibrate", "--checkpoint", str(old), "--data", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "new.pt")]) != 0
    assert "nothing" in capsys.readouterr().err
    assert not (tmp_path / "new.pt").exists()
    with pytest.raises(Exception, match="at least one labelled volume"):
        from melecole.stages.recalibrate import recalibrate

        recalibrate(params, old, [], tmp_path / "new.pt")
