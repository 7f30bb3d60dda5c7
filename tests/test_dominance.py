"""A result that is (nearly) one segment is called out by segment, evaluate and report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from melecole.cli import main
from melecole.config import params_from_dict
from melecole.evaluate.dominance import DOMINANT_SHARE, dominance_warning, largest_share, segment_sizes
from melecole.io import VolumeSpec, write_volumes
from melecole.stages.evaluate import evaluate
from melecole.stages.segment import segment
from tests.conftest import blocks_volume, tiny_params_dict


def test_largest_share_and_threshold():
    assert largest_share(np.array([5, 3, 2])) == 0.5
    assert largest_share(np.array([0, 0])) == 0.0
    np.testing.assert_array_equal(segment_sizes(np.array([[7, 7, 0], [3, 7, 0]], np.uint64)), [2, 1, 3])
    assert dominance_warning("x", DOMINANT_SHARE - 1e-9, 4) is None
    message = dominance_warning("seg.h5:segmentation", 0.97, 1)
    assert "seg.h5:segmentation" in message and "97 %" in message and "(1 segment in all)" in message


def _predictions(tmp_path, labels, boundaries: bool):
    config = params_from_dict(tiny_params_dict()).segment
    affinities = np.ones((len(config.offsets),) + labels.shape, np.float32)
    boundary = np.zeros(labels.shape, np.float32)
    if boundaries:
        boundary[np.diff(labels, axis=2, append=labels[:, :, -1:]) != 0] = 1.0
        boundary[np.diff(labels, axis=1, append=labels[:, -1:]) != 0] = 1.0
        boundary[np.diff(labels, axis=0, append=labels[-1:]) != 0] = 1.0
    offsets = json.dumps([list(o) for o in config.offsets])
    write_volumes(tmp_path / "pred.h5", {"affinities": affinities, "boundary": boundary},
                  {"offsets": offsets, "agglomeration_threshold": 0.5})
    return config.model_copy(update={"agglomeration": config.agglomeration.model_copy(update={"source": "boundary"}),
                                     "baselines": ["watershed"]})


def test_segment_and_evaluate_call_out_a_single_segment(tmp_path, capsys):
    _, labels = blocks_volume(shape=(16, 16, 16), block=8)
    config = _predictions(tmp_path, labels, boundaries=False)
    figures = segment(config, tmp_path / "pred.h5", tmp_path / "seg.h5")
    assert len(figures["warnings"]) == 2, figures["warnings"]  # no boundary anywhere: both are one segment
    assert any(f"{tmp_path / 'seg.h5'}:segmentation" in w and "100 %" in w for w in figures["warnings"])
    write_volumes(tmp_path / "gt.h5", {"labels": labels.astype(np.uint64)})

    metrics = evaluate(VolumeSpec(tmp_path / "seg.h5", "segmentation"), VolumeSpec(tmp_path / "gt.h5", "labels"),
                       baselines=True)
    assert len(metrics["warnings"]) == 2 and "segmentation" in metrics["warnings"][0]
    assert main(["evaluate", "--seg", f"{tmp_path / 'seg.h5'}:segmentation", "--gt", f"{tmp_path / 'gt.h5'}:labels"]) == 0
    assert "melecole evaluate: warning:" in capsys.readouterr().err


def test_a_good_segmentation_gets_no_warning(tmp_path):
    _, labels = blocks_volume(shape=(16, 16, 16), block=8)
    config = _predictions(tmp_path, labels, boundaries=True)
    figures = segment(config, tmp_path / "pred.h5", tmp_path / "seg.h5")
    assert figures["warnings"] == [] and figures["segments"] >= 8
    write_volumes(tmp_path / "gt.h5", {"labels": labels.astype(np.uint64)})
    metrics = evaluate(VolumeSpec(tmp_path / "seg.h5", "segmentation"), VolumeSpec(tmp_path / "gt.h5", "labels"))
    assert metrics["warnings"] == [] and metrics["vi_merge"] < 1.0
