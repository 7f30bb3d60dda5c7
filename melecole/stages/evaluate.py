"""evaluate: segmentation + ground truth -> VI split, VI merge, adapted Rand (JSON, MLflow).

The volumes are read block by block (:func:`melecole.evaluate.metrics.evaluate_volumes`), so
memory stays bounded whatever their size; the ground truth is read once for the segmentation
and all its baselines.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from melecole.errors import MelecoleError
from melecole.evaluate.metrics import evaluate_volumes
from melecole.evaluate.streaming import BLOCK_VOXELS, check_pair
from melecole.io import Volume, VolumeSpec, atomic_output, open_container, open_volume
from melecole.plots import with_vi_sum
from melecole.tracking import Tracker


def _opened(stack: contextlib.ExitStack, seg_spec: VolumeSpec, ground_truth: Volume, gt_spec: VolumeSpec) -> Volume:
    """The segmentation, opened and checked against the ground truth before anything is read."""
    try:
        segmentation = stack.enter_context(open_volume(seg_spec, ndim=3))
    except MelecoleError as error:
        raise MelecoleError(f"{seg_spec} vs {gt_spec}: {error}") from None
    try:
        check_pair(segmentation, ground_truth)
    except MelecoleError as error:
        # Volume names carry the dataset even when the address left it to the default.
        raise MelecoleError(f"{segmentation.name} vs {ground_truth.name}: {error}") from None
    return segmentation


def _other_datasets(seg_spec: VolumeSpec) -> list[str]:
    with open_container(seg_spec.path) as container:
        return [name for name in container.names() if name != seg_spec.dataset]


def evaluate(seg_spec: VolumeSpec, gt_spec: VolumeSpec, out: str | Path | None = None,
             run_file: str | Path | None = None, baselines: bool = False,
             block_voxels: int = BLOCK_VOXELS) -> dict:
    """Scores a segmentation; optionally writes the metrics JSON and adds them to the MLflow run.

    With ``baselines``, every other dataset of the segmentation file (the baselines that
    ``segment`` writes beside its main result) is scored too, under the key ``baselines``.
    ``block_voxels`` is the number of voxels of each volume read at a time.
    """
    with contextlib.ExitStack() as stack:
        ground_truth = stack.enter_context(open_volume(gt_spec, ndim=3))
        specs = [seg_spec]
        segmentations = [_opened(stack, seg_spec, ground_truth, gt_spec)]
        if baselines:
            specs += [VolumeSpec(seg_spec.path, name) for name in _other_datasets(seg_spec)]
            segmentations += [_opened(stack, spec, ground_truth, gt_spec) for spec in specs[1:]]
        try:
            scores = evaluate_volumes(segmentations, ground_truth, block_voxels)
        except MelecoleError as error:
            raise MelecoleError(f"{segmentations[0].name} vs {ground_truth.name}: {error}") from None
    metrics: dict = with_vi_sum(scores[0])
    if baselines:
        metrics["baselines"] = {spec.dataset: with_vi_sum(score) for spec, score in zip(specs[1:], scores[1:])}
    if out is not None:
        with atomic_output(out) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    if run_file is not None and Path(run_file).is_file():
        tracker = Tracker.resume(Path(run_file).read_text().strip())
        flat = {f"test_{k}": v for k, v in metrics.items() if k != "baselines"}
        for name, scores_of in metrics.get("baselines", {}).items():
            flat.update({f"test_{name}_{k}": v for k, v in scores_of.items()})
        tracker.log_metrics(flat)
        tracker.finish()
    return metrics
