"""evaluate: segmentation + ground truth -> VI split, VI merge, adapted Rand (JSON, MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

from melecole.errors import MelecoleError
from melecole.evaluate import evaluate_segmentation
from melecole.io import VolumeSpec, atomic_output, open_container, read_volume
from melecole.tracking import Tracker


def _score(seg_spec: VolumeSpec, ground_truth, gt_spec: VolumeSpec) -> dict[str, float]:
    try:
        return evaluate_segmentation(read_volume(seg_spec), ground_truth)
    except MelecoleError as error:
        raise MelecoleError(f"{seg_spec} vs {gt_spec}: {error}") from None


def _other_datasets(seg_spec: VolumeSpec) -> list[str]:
    with open_container(seg_spec.path) as container:
        return [name for name in container.names() if name != seg_spec.dataset]


def evaluate(seg_spec: VolumeSpec, gt_spec: VolumeSpec, out: str | Path | None = None,
             run_file: str | Path | None = None, baselines: bool = False) -> dict:
    """Scores a segmentation; optionally writes the metrics JSON and adds them to the MLflow run.

    With ``baselines``, every other dataset of the segmentation file (the baselines that
    ``segment`` writes beside its main result) is scored too, under the key ``baselines``.
    """
    ground_truth = read_volume(gt_spec)
    metrics: dict = _score(seg_spec, ground_truth, gt_spec)
    if baselines:
        metrics["baselines"] = {name: _score(VolumeSpec(seg_spec.path, name), ground_truth, gt_spec)
                                for name in _other_datasets(seg_spec)}
    if out is not None:
        with atomic_output(out) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    if run_file is not None and Path(run_file).is_file():
        tracker = Tracker.resume(Path(run_file).read_text().strip())
        flat = {f"test_{k}": v for k, v in metrics.items() if k != "baselines"}
        for name, scores in metrics.get("baselines", {}).items():
            flat.update({f"test_{name}_{k}": v for k, v in scores.items()})
        tracker.log_metrics(flat)
        tracker.finish()
    return metrics
