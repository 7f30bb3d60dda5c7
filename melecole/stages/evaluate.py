"""evaluate: segmentation + ground truth -> VI split, VI merge, adapted Rand (JSON, MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

from melecole.errors import MelecoleError
from melecole.evaluate import evaluate_segmentation
from melecole.io import VolumeSpec, atomic_output, read_volume
from melecole.tracking import Tracker


def evaluate(seg_spec: VolumeSpec, gt_spec: VolumeSpec, out: str | Path | None = None,
             run_file: str | Path | None = None) -> dict[str, float]:
    """Scores a segmentation; optionally writes the metrics JSON and adds them to the MLflow run."""
    segmentation = read_volume(seg_spec)
    ground_truth = read_volume(gt_spec)
    try:
        metrics = evaluate_segmentation(segmentation, ground_truth)
    except MelecoleError as error:
        raise MelecoleError(f"{seg_spec} vs {gt_spec}: {error}") from None
    if out is not None:
        with atomic_output(out) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    if run_file is not None and Path(run_file).is_file():
        tracker = Tracker.resume(Path(run_file).read_text().strip())
        tracker.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        tracker.finish()
    return metrics
