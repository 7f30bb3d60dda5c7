"""The segment stage: method choice, calibration on a labelled volume, stored offsets and threshold."""

from __future__ import annotations

import numpy as np
import pytest

from melecole.config import params_from_dict
from melecole.data.targets import boundary_map
from melecole.errors import MelecoleError
from melecole.evaluate import evaluate_pooled, evaluate_segmentation
from melecole.io import read_volume, write_volumes
from melecole.stages.segment import calibrate, run_method, segment
from tests.conftest import blocks_volume, tiny_params_dict


def _config(**overrides):
    return params_from_dict(tiny_params_dict(**overrides)).segment


def _perfect_predictions(labels):
    boundary = boundary_map(labels) * 0.9
    config = _config()
    affinities = np.ones((len(config.offsets),) + labels.shape, np.float32)
    return affinities, boundary


def test_calibration_picks_the_threshold_with_the_lowest_vi():
    _, labels = blocks_volume(shape=(16, 16, 16), block=8)
    affinities, boundary = _perfect_predictions(labels)
    boundary[:, :, 3] = np.maximum(boundary[:, :, 3], 0.4)  # a faint false boundary inside blocks
    config = _config(**{"segment.agglomeration": {"candidates": [0.05, 0.7, 0.99]}})
    threshold, metrics, table = calibrate(config, [({"affinities": affinities, "boundary": boundary}, labels)])
    assert threshold == 0.7
    assert metrics["vi_split"] + metrics["vi_merge"] == pytest.approx(0, abs=1e-9)
    assert set(table) == {0.05, 0.7, 0.99}
    assert table[0.99]["vi_merge"] > 0 and table[0.05]["vi_split"] > 0


def test_calibration_pools_the_validation_volumes():
    # Volume a wants a high threshold (a faint false boundary inside its blocks must be merged);
    # volume b, twice as large, a low one (its blocks meet at faint true boundaries).
    config = _config(**{"segment.agglomeration": {"candidates": [0.05, 0.7, 0.99]}})
    _, labels_a = blocks_volume(shape=(16, 16, 16), block=8)
    affinities_a, boundary_a = _perfect_predictions(labels_a)
    boundary_a[:, :, 3] = np.maximum(boundary_a[:, :, 3], 0.4)
    _, labels_b = blocks_volume(shape=(32, 16, 16), block=8)
    affinities_b, boundary_b = _perfect_predictions(labels_b)
    boundary_b[boundary_b > 0] = 0.4
    a = ({"affinities": affinities_a, "boundary": boundary_a}, labels_a)
    b = ({"affinities": affinities_b, "boundary": boundary_b}, labels_b)

    alone_a, alone_b = calibrate(config, [a]), calibrate(config, [b])
    threshold, metrics, table = calibrate(config, [a, b])

    assert alone_a[0] == 0.7 and alone_b[0] == 0.05
    for t in (0.05, 0.7, 0.99):
        segmentations = [run_method("agglomeration", config, predictions, t) for predictions, _ in (a, b)]
        assert table[t] == pytest.approx(evaluate_pooled([(segmentations[0], labels_a), (segmentations[1], labels_b)]))
    assert threshold == 0.05 and metrics == table[0.05]
    assert table[0.05]["vi_split"] > 0  # volume a's blocks stay split: pooling trades a for b


def test_every_method_runs_and_agglomeration_needs_a_threshold():
    _, labels = blocks_volume(shape=(16, 16, 16), block=8)
    affinities, boundary = _perfect_predictions(labels)
    predictions = {"affinities": affinities, "boundary": boundary}
    config = _config()
    for method in ("agglomeration", "mws", "watershed"):
        segmentation = run_method(method, config, predictions, threshold=0.5)
        assert segmentation.shape == labels.shape and segmentation.dtype == np.uint64
    perfect = run_method("agglomeration", config, predictions, threshold=0.5)
    assert evaluate_segmentation(perfect, labels)["vi_merge"] == pytest.approx(0, abs=1e-9)
    with pytest.raises(MelecoleError, match="threshold is null"):
        run_method("agglomeration", config, predictions, threshold=None)


def test_agglomeration_of_predicted_affinities():
    from melecole.data.targets import affinities as affinity_targets

    _, labels = blocks_volume(shape=(16, 16, 16), block=8)
    affinities, boundary = _perfect_predictions(labels)
    config = _config(**{"model.affinity_head": True, "segment.agglomeration": {"source": "affinities"}})
    with pytest.raises(MelecoleError, match="no predicted_affinities"):
        run_method("agglomeration", config, {"affinities": affinities, "boundary": boundary}, threshold=0.5)
    predicted, _ = affinity_targets(labels, config.offsets)
    uninformative = np.full_like(boundary, 0.5)  # the boundary map is not used with this source
    segmentation = run_method("agglomeration", config, {"affinities": affinities, "boundary": uninformative,
                                                        "predicted_affinities": predicted}, threshold=0.5)
    assert evaluate_segmentation(segmentation, labels)["vi_split"] == pytest.approx(0, abs=1e-9)


def test_affinity_source_needs_the_head():
    with pytest.raises(MelecoleError, match="needs model.affinity_head"):
        _config(**{"segment.agglomeration": {"source": "affinities"}})


def test_segment_stage_writes_method_and_baselines(tmp_path):
    _, labels = blocks_volume(shape=(16, 16, 16), block=8)
    affinities, boundary = _perfect_predictions(labels)
    config = _config()
    offsets = "[" + ", ".join(f"[{a}, {b}, {c}]" for a, b, c in config.offsets) + "]"
    write_volumes(tmp_path / "pred.h5", {"affinities": affinities, "boundary": boundary},
                  {"offsets": offsets, "agglomeration_threshold": 0.5})
    figures = segment(config, tmp_path / "pred.h5", tmp_path / "seg.h5")
    assert figures["threshold"] == 0.5
    # No affinity head, and no threshold chosen for the embedding's agglomeration: those skipped.
    assert figures["method"] == "agglomeration-boundary"
    assert set(figures["seconds"]) == {"agglomeration-boundary", "mws-embedding", "watershed"}
    assert sorted(w.split(":")[0] for w in figures["warnings"] if "skipped" in w) == [
        "baseline agglomeration-affinities skipped", "baseline agglomeration-embedding skipped",
        "baseline mws-affinities skipped"]
    for dataset in ("segmentation", "mws-embedding", "watershed"):
        assert read_volume(f"{tmp_path / 'seg.h5'}:{dataset}").shape == labels.shape

    write_volumes(tmp_path / "other.h5", {"affinities": affinities, "boundary": boundary},
                  {"offsets": "[[1, 0, 0]]"})
    with pytest.raises(MelecoleError, match="predict again"):
        segment(config, tmp_path / "other.h5", tmp_path / "seg2.h5")
    assert not (tmp_path / "seg2.h5").exists()


def test_boundary_seeds_keep_the_mutex_watershed_from_merging_what_the_boundary_separates():
    from tests.test_segment_mutex import _perfect_affinities

    _, labels = blocks_volume(shape=(16, 16, 16), block=8)
    _, boundary = _perfect_predictions(labels)
    config = _config(**{"segment.min_size": 0})
    affinities = _perfect_affinities(labels, config.offsets)
    affinities[3:] = 0.5  # long-range edges say nothing
    affinities[2, 2:6, 2:6, 8] = 1.0  # a leak through the wall at x = 8 (channel (0, 0, -1))
    predictions = {"affinities": affinities, "boundary": boundary}
    unseeded = run_method("mws", config, predictions, threshold=None)
    seeded = run_method("mws", _config(**{"segment.mws_seeds": "boundary", "segment.seed_distance": 2.0,
                                          "segment.min_size": 0}), predictions, threshold=None)
    assert evaluate_segmentation(unseeded, labels)["vi_merge"] > 0.2  # two blocks joined
    assert evaluate_segmentation(seeded, labels)["vi_merge"] == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize(("margin", "expected"), [(0.0, 0.5), (0.05, 0.45), (0.1, 0.45), (0.5, 0.5)])
def test_robust_choice_keeps_away_from_the_merge_cliff(margin, expected):
    from melecole.stages.segment import robust_choice

    # VI sums by threshold: the plain minimum at 0.5 sits right before a cliff at 0.55.
    scores = {0.3: 0.9, 0.4: 0.5, 0.45: 0.45, 0.5: 0.35, 0.55: 0.86, 0.6: 1.25, 0.7: 2.9}
    assert robust_choice(scores, margin) == expected
