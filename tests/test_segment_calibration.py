"""The Mutex Watershed's repulsive bias, the calibration of every variant on validation, and
`segment.method: auto` following the stored choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from melecole.config import params_from_dict
from melecole.evaluate import evaluate_segmentation
from melecole.inference.encoding import decode, encode
from melecole.io import open_container, read_volume, write_volumes
from melecole.segment.mutex import bias_repulsive, mutex_watershed
from melecole.stages.calibration import calibrate_bias, calibrate_variants
from melecole.stages.segment import run_method, segment
from melecole.stages.variants import resolve_variant, variant_name
from tests.conftest import blocks_volume, tiny_params_dict
from tests.test_segment_mutex import _perfect_affinities


def _config(**overrides):
    return params_from_dict(tiny_params_dict(**{"segment.min_size": 0, **overrides})).segment


def _too_repulsive(labels: np.ndarray, offsets) -> np.ndarray:
    """Affinities whose repulsion inside objects (weight 0.95) beats their attraction (0.8): the
    Mutex Watershed over-splits them unless a bias weakens the repulsion. Across objects:
    attraction 0.1, repulsion 1.0. Quantised as stored predictions."""
    same = _perfect_affinities(labels, offsets).astype(bool)
    affinities = np.where(same, np.float32(0.8), np.float32(0.1))
    affinities[3:] = np.where(same[3:], np.float32(0.05), np.float32(0.0))
    return decode(encode("affinities", affinities))


def _mws_knobs(bias, map_="none", strides=(1, 1, 1), randomize=False, min_size=0) -> dict:
    return {"bias": bias, "map": map_, "strides": list(strides), "randomize_strides": randomize, "min_size": min_size}


def _vi_sum(segmentation, labels) -> float:
    scores = evaluate_segmentation(segmentation, labels)
    return scores["vi_split"] + scores["vi_merge"]


def test_the_bias_shifts_only_repulsive_channels_in_whole_levels_and_keeps_the_uint8_path():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, size=(5, 3, 4, 4), dtype=np.uint8)
    biased = bias_repulsive(stored, 3, 0.1)  # 0.1 * 255 = 25.5 -> 26 levels
    np.testing.assert_array_equal(biased[:3], stored[:3])
    np.testing.assert_array_equal(biased[3:], np.minimum(stored[3:].astype(int) + 26, 255))
    decoded = bias_repulsive(decode(stored), 3, -0.1)
    np.testing.assert_array_equal(decoded, decode(bias_repulsive(stored, 3, -0.1)))
    np.testing.assert_array_equal(decoded[3:], decode(np.maximum(stored[3:].astype(int) - 26, 0).astype(np.uint8)))
    # Not quantised: shifted as floats and clipped to [0, 1].
    floats = rng.random((4, 2, 3, 3), dtype=np.float32) * 0.9 + 0.05
    np.testing.assert_allclose(bias_repulsive(floats, 3, 0.5)[3:], np.minimum(floats[3:] + 0.5, 1.0))
    assert bias_repulsive(stored, 3, 0.0) is stored
    with pytest.raises(ValueError, match="bias"):
        bias_repulsive(stored, 3, 1.5)


def test_a_positive_bias_undoes_over_splitting_by_too_strong_repulsion():
    _, labels = blocks_volume(shape=(12, 12, 12), block=6)
    config = _config()
    affinities = _too_repulsive(labels, config.offsets)
    unbiased = mutex_watershed(affinities, config.offsets)
    biased = mutex_watershed(bias_repulsive(affinities, 3, 0.3), config.offsets)
    assert evaluate_segmentation(unbiased, labels)["vi_split"] > 1.0
    assert _vi_sum(biased, labels) == pytest.approx(0.0, abs=1e-9)
    # Too much bias removes the repulsion between objects (0.1 attraction vs 1 - 0.95 repulsion).
    assert evaluate_segmentation(mutex_watershed(bias_repulsive(affinities, 3, 0.95), config.offsets),
                                 labels)["vi_merge"] > 0.5


def test_the_bias_is_chosen_on_the_pooled_volumes_and_a_fixed_one_is_kept():
    config = _config(**{"segment.mws_bias_candidates": [0.0, 0.3, 0.95], "segment.mws_bias_margin": 0.0})
    volumes = []
    for seed in (0, 1):
        _, labels = blocks_volume(shape=(12, 12, 12), block=6, seed=seed)
        volumes.append(({"affinities": _too_repulsive(labels, config.offsets)}, labels))
    volumes = [({**p, "boundary": np.zeros(labels.shape, np.float32)}, labels) for p, labels in volumes]
    bias, metrics, table = calibrate_bias(config, volumes)
    assert bias == 0.3 and metrics["vi_split"] + metrics["vi_merge"] == pytest.approx(0.0, abs=1e-9)
    assert set(table) == {0.0, 0.3, 0.95} and table[0.0]["vi_split"] > 1.0
    fixed, _, only = calibrate_bias(config.model_copy(update={"mws_bias": 0.0}), volumes)
    assert fixed == 0.0 and set(only) == {0.0}


def _labelled(config, seed=0):
    """Predictions where the embedding's Mutex Watershed needs a bias, the affinity head's is
    perfect, and the boundary agglomeration merges everything (no boundary at all)."""
    _, labels = blocks_volume(shape=(12, 12, 12), block=6, seed=seed)
    predictions = {"affinities": _too_repulsive(labels, config.offsets),
                   "predicted_affinities": _perfect_affinities(labels, config.offsets),
                   "boundary": np.zeros(labels.shape, np.float32)}
    return predictions, labels


def test_every_variant_gets_its_own_knob_and_the_best_one_is_the_choice():
    config = _config(**{"segment.choices": ["agglomeration-embedding", "mws-embedding", "mws-affinities"],
                        "segment.mws_bias_candidates": [0.0, 0.3], "segment.mws_bias_margin": 0.0})
    volumes = [_labelled(config, seed) for seed in (0, 1)]
    calibration = calibrate_variants(config, volumes, also=["agglomeration-boundary", "watershed"])
    variants = calibration["variants"]
    assert list(variants) == ["agglomeration-embedding", "mws-embedding", "mws-affinities", "agglomeration-boundary"]
    assert variants["mws-embedding"]["bias"] == 0.3 and variants["mws-embedding"]["vi_sum"] == pytest.approx(0, abs=1e-9)
    assert "threshold" in variants["agglomeration-embedding"] and "bias" not in variants["agglomeration-embedding"]
    assert variants["agglomeration-boundary"]["vi_merge"] > 1.0  # calibrated, but not among the choices
    best = min(config.choices, key=lambda name: variants[name]["vi_sum"])
    assert calibration["choice"] == best
    # Without the affinity head's predictions its variants are left out.
    headless = [({k: v for k, v in p.items() if k != "predicted_affinities"}, gt) for p, gt in volumes]
    assert list(calibrate_variants(config, headless)["variants"]) == ["agglomeration-embedding", "mws-embedding"]
    with pytest.raises(Exception, match="need the affinity head"):
        calibrate_variants(config.model_copy(update={"choices": ["mws-affinities"]}), headless)


def test_variant_names_resolve_to_a_method_and_its_input():
    config = _config()
    assert resolve_variant("mws-affinities", config)[1].mws_source == "affinities"
    assert resolve_variant("agglomeration-embedding", config)[1].agglomeration.source == "embedding"
    assert variant_name("agglomeration", config) == f"agglomeration-{config.agglomeration.source}"
    assert variant_name("watershed", config) == "watershed"
    with pytest.raises(Exception, match="unknown segmentation method"):
        resolve_variant("mws-boundary", config)


def _stored_predictions(path, config, calibration):
    predictions, labels = _labelled(config)
    offsets = json.dumps([list(o) for o in config.offsets])
    write_volumes(path, predictions, {"offsets": offsets, "agglomeration_threshold": 0.5,
                                      "calibration": json.dumps(calibration)})
    return predictions, labels


def test_auto_segments_with_the_stored_choice_and_every_baseline_with_its_own_knob(tmp_path):
    config = _config()
    calibration = {"choice": "mws-embedding",
                   "variants": {"mws-embedding": {"bias": 0.3}, "agglomeration-embedding": {"threshold": 0.6},
                                "mws-affinities": {"bias": -0.1}, "agglomeration-affinities": {"threshold": 0.4}}}
    predictions, labels = _stored_predictions(tmp_path / "pred.h5", config, calibration)
    figures = segment(config, tmp_path / "pred.h5", tmp_path / "seg.h5")

    assert figures["method"] == "mws-embedding" and figures["knobs"]["mws-embedding"] == _mws_knobs(0.3)
    main = read_volume(f"{tmp_path / 'seg.h5'}:segmentation")
    np.testing.assert_array_equal(main, run_method("mws-embedding", config, predictions, None, bias=0.3))
    assert _vi_sum(main, labels) == pytest.approx(0.0, abs=1e-9)
    assert figures["knobs"]["mws-affinities"] == _mws_knobs(-0.1)
    assert figures["knobs"]["agglomeration-embedding"] == {"threshold": 0.6, "min_size": 0}
    np.testing.assert_array_equal(read_volume(f"{tmp_path / 'seg.h5'}:agglomeration-embedding"),
                                  run_method("agglomeration-embedding", config, predictions, 0.6))
    with open_container(tmp_path / "seg.h5") as container:  # the main result is not written twice
        assert set(container.names()) == {"segmentation", "agglomeration-affinities", "agglomeration-embedding",
                                          "mws-affinities", "watershed"}
        assert container.attrs["method"] == "mws-embedding" and json.loads(container.attrs["calibration"]) == calibration

    # A bias in the parameters wins over the stored one; an explicit method over the stored choice.
    unbiased = segment(config.model_copy(update={"mws_bias": 0.0}), tmp_path / "pred.h5", tmp_path / "seg0.h5")
    assert unbiased["knobs"]["mws-embedding"] == _mws_knobs(0.0)
    assert evaluate_segmentation(read_volume(f"{tmp_path / 'seg0.h5'}:segmentation"), labels)["vi_split"] > 1.0
    explicit = segment(config.model_copy(update={"method": "watershed", "baselines": []}),
                       tmp_path / "pred.h5", tmp_path / "seg1.h5")
    assert explicit["method"] == "watershed"


def test_auto_without_a_stored_choice_is_the_configured_agglomeration(tmp_path):
    config = _config()
    predictions, _ = _labelled(config)
    write_volumes(tmp_path / "pred.h5", predictions,
                  {"offsets": json.dumps([list(o) for o in config.offsets]), "agglomeration_threshold": 0.5})
    figures = segment(config.model_copy(update={"baselines": []}), tmp_path / "pred.h5", tmp_path / "seg.h5")
    assert figures["method"] == variant_name("agglomeration", config) and figures["threshold"] == 0.5
    np.testing.assert_array_equal(read_volume(f"{tmp_path / 'seg.h5'}:segmentation"),
                                  run_method("agglomeration", config, predictions, 0.5))


def test_a_collapsed_knob_and_its_neighbours_are_not_chosen_while_another_is_left():
    from melecole.stages.segment import robust_choice

    scores = {0.1: 4.0, 0.2: 3.5, 0.3: 3.0, 0.4: 3.0}  # 0.3 and 0.4: one segment (VI = the labels' entropy)
    assert robust_choice(scores, 0.0) == 0.3
    assert robust_choice(scores, 0.0, degenerate={0.3, 0.4}) == 0.2
    assert robust_choice(scores, 0.1, degenerate={0.3, 0.4}) == 0.1  # 0.2 borders the collapse
    assert robust_choice(scores, 0.0, degenerate=set(scores)) == 0.3  # all collapsed: the plain minimum


def test_the_fitted_map_is_kept_when_it_scores_better_on_validation_and_segment_applies_it(tmp_path):
    from melecole.segment.affinity_map import fit_affinity_map, map_from_text
    from melecole.stages.calibration import calibrate_mutex

    config = _config(**{"segment.mws_bias_candidates": [-0.1, 0.0, 0.3], "segment.mws_bias_margin": 0.0})
    volumes = [_labelled(config, seed) for seed in (0, 1)]
    plain = calibrate_mutex(config.model_copy(update={"mws_map": "none"}), volumes)
    fitted = calibrate_mutex(config.model_copy(update={"mws_map": "fitted"}), volumes)
    assert "map" not in plain and len(fitted["map"]) == len(config.offsets)
    table = map_from_text(fitted["map"])
    np.testing.assert_array_equal(table, fit_affinity_map([(p["affinities"], gt) for p, gt in volumes], config.offsets))
    expected = calibrate_bias(config, volumes, affinity_map=table)
    assert fitted["bias"] == expected[0] and fitted["vi_sum"] == pytest.approx(sum(expected[1][k] for k in ("vi_split", "vi_merge")))
    either = calibrate_mutex(config, volumes)  # auto: the better of the two
    assert either["vi_sum"] == min(plain["vi_sum"], fitted["vi_sum"])
    assert ("map" in either) == (fitted["vi_sum"] < plain["vi_sum"])

    calibration = {"choice": "mws-embedding", "variants": {"mws-embedding": fitted}}
    predictions, _ = _stored_predictions(tmp_path / "pred.h5", config, calibration)
    figures = segment(config.model_copy(update={"baselines": []}), tmp_path / "pred.h5", tmp_path / "seg.h5")
    assert figures["knobs"]["mws-embedding"] == _mws_knobs(fitted["bias"], "fitted")
    np.testing.assert_array_equal(read_volume(f"{tmp_path / 'seg.h5'}:segmentation"),
                                  run_method("mws-embedding", config, predictions, None, bias=fitted["bias"],
                                             affinity_map=table))
    # mws_map none ignores the stored map; fitted without a stored map is an error.
    ignored = segment(config.model_copy(update={"baselines": [], "mws_map": "none"}), tmp_path / "pred.h5",
                      tmp_path / "seg-none.h5")
    assert ignored["knobs"]["mws-embedding"]["map"] == "none"
    calibration["variants"]["mws-embedding"] = plain
    _stored_predictions(tmp_path / "plain.h5", config, calibration)
    with pytest.raises(Exception, match="no affinity map"):
        segment(config.model_copy(update={"baselines": [], "mws_map": "fitted"}), tmp_path / "plain.h5",
                tmp_path / "seg-fitted.h5")
