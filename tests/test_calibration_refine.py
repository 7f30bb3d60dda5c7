"""The knobs chosen after the threshold or bias: the Mutex Watershed's strides and every variant's
size filter, on validation, stored and used by `segment`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from melecole.config import params_from_dict
from melecole.evaluate import evaluate_pooled
from melecole.io import read_volume, write_volumes
from melecole.segment.postprocess import merge_small_segments
from melecole.stages.calibration import calibrate_size, calibrate_strides, calibrate_variants, unfiltered
from melecole.stages.segment import run_method, segment
from melecole.stages.variants import knob_label
from tests.conftest import blocks_volume, tiny_params_dict
from tests.test_segment_calibration import _too_repulsive
from tests.test_segment_mutex import _perfect_affinities


def _config(**overrides):
    return params_from_dict(tiny_params_dict(**{"segment.min_size": 0, **overrides})).segment


def _specked(config, seed=0):
    """Blocks of 6^3 = 216 voxels, each holding one 2^3 speck cut off from it in the affinities:
    every segmenter returns the specks as segments of their own (8 voxels) unless a size filter
    merges them back. A filter above 216 voxels merges whole objects."""
    _, labels = blocks_volume(shape=(12, 12, 12), block=6, seed=seed)
    cut = labels.copy()
    for z in (1, 7):
        for y in (1, 7):
            for x in (1, 7):
                cut[z:z + 2, y:y + 2, x:x + 2] += 1000
    affinities = _perfect_affinities(cut, config.offsets)
    predictions = {"affinities": affinities, "predicted_affinities": affinities,
                   "boundary": np.zeros(labels.shape, np.float32)}
    return predictions, labels


def _vi_sum(metrics) -> float:
    return metrics["vi_split"] + metrics["vi_merge"]


def test_the_size_filter_is_the_candidate_with_the_lowest_pooled_vi():
    config = _config(**{"segment.min_size_candidates": [0, 25, 400]})
    volumes = [_specked(config, seed) for seed in (0, 1)]
    for name, knobs in (("agglomeration-affinities", {"threshold": 0.5}), ("mws-embedding", {"bias": 0.0})):
        chosen = calibrate_size(name, config, volumes, knobs)
        assert chosen["min_size"] == 25, name  # 0 keeps the specks, 400 merges whole blocks
        assert chosen["vi_sum"] == pytest.approx(0.0, abs=1e-9)
        raw = unfiltered(name, config, volumes, knobs)
        by_hand = {size: _vi_sum(evaluate_pooled([(merge_small_segments(s, size), gt)
                                                  for s, (_, gt) in zip(raw, volumes)])) for size in (0, 25, 400)}
        assert by_hand[0] > 0.1 and by_hand[400] > 0.5 and min(by_hand, key=by_hand.get) == 25
    # No candidates: the parameters' min_size, nothing added.
    fixed = calibrate_size("mws-embedding", config.model_copy(update={"min_size_candidates": []}), volumes,
                           {"bias": 0.0})
    assert fixed == {"bias": 0.0}


def test_the_strides_are_the_candidate_with_the_lowest_pooled_vi():
    config = _config(**{"segment.mws_stride_candidates": [{"strides": [1, 1, 1]}, {"strides": [2, 2, 2]},
                                                          {"strides": [3, 3, 3], "randomize": True}]})
    _, labels = blocks_volume(shape=(12, 12, 12), block=6, seed=0)
    volumes = [({"affinities": _too_repulsive(labels, config.offsets), "boundary": np.zeros(labels.shape, np.float32)},
                labels)]
    chosen = calibrate_strides("mws-embedding", config, volumes, {"bias": 0.0})
    by_hand = {}
    for strides, randomize in (((1, 1, 1), False), ((2, 2, 2), False), ((3, 3, 3), True)):
        resolved = config.model_copy(update={"strides": strides, "randomize_strides": randomize})
        by_hand[(strides, randomize)] = _vi_sum(evaluate_pooled(
            [(run_method("mws-embedding", resolved, p, None, bias=0.0), gt) for p, gt in volumes]))
    best = min(by_hand, key=by_hand.get)
    # Fewer repulsive edges split these too-repulsive objects less: every edge is not the best.
    assert by_hand[best] < by_hand[((1, 1, 1), False)] - 0.1
    assert (tuple(chosen["strides"]), chosen["randomize_strides"]) == best
    assert chosen["vi_sum"] == pytest.approx(by_hand[best])


def test_calibrated_strides_and_size_are_stored_and_segment_runs_with_them(tmp_path):
    config = _config(**{"segment.choices": ["mws-embedding", "agglomeration-affinities"],
                        "segment.baselines": ["agglomeration-affinities"], "segment.mws_bias_candidates": [0.0],
                        "segment.min_size_candidates": [0, 25, 400],
                        "segment.mws_stride_candidates": [{"strides": [1, 1, 1]}, {"strides": [2, 2, 2]}]})
    volumes = [_specked(config, seed) for seed in (0, 1)]
    calibration = calibrate_variants(config, volumes)
    for name in ("mws-embedding", "agglomeration-affinities"):
        assert calibration["variants"][name]["min_size"] == 25
    mws = calibration["variants"]["mws-embedding"]
    assert "strides" in mws and "size 25" in knob_label(mws)

    predictions, labels = volumes[0]
    write_volumes(tmp_path / "pred.h5", predictions, {"offsets": json.dumps([list(o) for o in config.offsets]),
                                                      "calibration": json.dumps(calibration)})
    figures = segment(config, tmp_path / "pred.h5", tmp_path / "seg.h5")
    assert figures["knobs"][figures["method"]]["min_size"] == 25
    for name in ("segmentation", "agglomeration-affinities"):
        result = read_volume(f"{tmp_path / 'seg.h5'}:{name}")
        assert len(np.unique(result)) == len(np.unique(labels)), name  # no specks left
    # Without candidates in the parameters, segment keeps the parameters' min_size (0): specks stay.
    plain = segment(config.model_copy(update={"min_size_candidates": [], "mws_stride_candidates": []}),
                    tmp_path / "pred.h5", tmp_path / "seg0.h5")
    assert plain["knobs"][plain["method"]]["min_size"] == 0
    assert len(np.unique(read_volume(f"{tmp_path / 'seg0.h5'}:segmentation"))) == len(np.unique(labels)) + 8


def test_size_candidates_must_be_distinct_and_non_negative():
    with pytest.raises(Exception, match="distinct"):
        _config(**{"segment.min_size_candidates": [25, 25]})
    with pytest.raises(Exception, match="positive"):
        _config(**{"segment.mws_stride_candidates": [{"strides": [0, 1, 1]}]})
