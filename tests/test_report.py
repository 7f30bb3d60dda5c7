"""report names every volume it shows and puts the published rows beside their own volume only."""

from __future__ import annotations

import json

import pytest

from melecole.errors import MelecoleError
from melecole.stages.evaluate import flat_metrics, held_out_metrics
from melecole.stages.report import report
from tests.conftest import DATASETS


def _scores(vi_split, vi_merge=0.25, **extra):
    return {"vi_split": vi_split, "vi_merge": vi_merge, "arand": 0.1, "vi_sum": vi_split + vi_merge, **extra}


def _write(tmp_path, metrics):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    return path


def test_published_rows_only_beside_the_flyem_fib_small_test_block(tmp_path):
    metrics = {**_scores(0.5, volume="flyem-fib-small test", baselines={"mws": _scores(3.0)}, warnings=[]),
               "test_flyem-fib-medulla": _scores(1.25, volume="flyem-fib-medulla test",
                                                 warnings=["seg.h5:segmentation: one segment holds 90 %"])}
    text = report(_write(tmp_path, metrics), DATASETS)
    small, medulla = text.split("\n\n")[:2]
    assert small.startswith("flyem-fib-small test\n") and "gala agglomeration (test-seg1)" in small
    assert "  same model, mws" in small and "3.0000" in small
    assert medulla.startswith("flyem-fib-medulla test\n") and "gala" not in medulla and "1.2500" in medulla
    assert text.rstrip().endswith("warning: seg.h5:segmentation: one segment holds 90 %")


def test_another_volume_is_named_and_shown_without_published_rows(tmp_path):
    text = report(_write(tmp_path, _scores(0.7, volume="synthetic test")), DATASETS)
    assert text.startswith("synthetic test\n") and "gala" not in text and "flyem-fib-small" not in text
    unnamed = report(_write(tmp_path, _scores(0.7)), DATASETS)
    assert unnamed.startswith("unnamed volume") and "gala" not in unnamed


def test_bad_metrics_files_are_named(tmp_path):
    with pytest.raises(MelecoleError, match="metrics file not found"):
        report(tmp_path / "none.json", DATASETS)
    with pytest.raises(MelecoleError, match="test_x: missing keys arand"):
        report(_write(tmp_path, {**_scores(0.5), "test_x": {"vi_split": 1.0, "vi_merge": 1.0}}), DATASETS)
    with pytest.raises(MelecoleError, match="expected a JSON object"):
        report(_write(tmp_path, [1, 2]), DATASETS)


def test_held_out_metrics_join_under_their_names_and_flatten_for_mlflow(tmp_path):
    (tmp_path / "held" / "flyem-fib-medulla").mkdir(parents=True)
    scores = _scores(1.0, volume="flyem-fib-medulla test", baselines={"mws": _scores(2.0)}, warnings=[])
    (tmp_path / "held" / "flyem-fib-medulla" / "metrics.json").write_text(json.dumps(scores))
    joined = held_out_metrics(tmp_path / "held")
    assert joined == {"test_flyem-fib-medulla": scores}
    flat = flat_metrics({**_scores(0.5, volume="flyem-fib-small test", warnings=[]), **joined})
    assert flat["test_vi_split"] == 0.5 and flat["test_flyem-fib-medulla_vi_split"] == 1.0
    assert flat["test_flyem-fib-medulla_mws_vi_sum"] == 2.25
    assert all(isinstance(v, float) for v in flat.values())
    with pytest.raises(MelecoleError, match="run `melecole heldout` first"):
        held_out_metrics(tmp_path / "nowhere")


def test_the_validation_of_every_variant_is_shown_with_its_knob_and_the_choice_marked(tmp_path):
    validation = {"choice": "mws-embedding",
                  "variants": {"agglomeration-affinities": _scores(0.75, threshold=0.35),
                               "mws-embedding": _scores(0.5, bias=0.1)}}
    metrics = {**_scores(0.6, volume="synthetic test", method="mws-embedding", warnings=[]), "validation": validation}
    tables = report(_write(tmp_path, metrics), DATASETS).split("\n\n")
    assert tables[0].startswith("pooled validation")
    assert "  agglomeration-affinities (threshold 0.35)" in tables[0] and "0.7500" in tables[0]
    assert "* mws-embedding (bias 0.1)" in tables[0]
    assert tables[1].startswith("synthetic test\n") and "melecole (mws-embedding)" in tables[1]
