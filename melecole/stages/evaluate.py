"""evaluate: segmentation + ground truth -> VI split, VI merge, adapted Rand (JSON, MLflow).

The volumes are read block by block (:func:`melecole.evaluate.metrics.contingency_tables`), so
memory stays bounded whatever their size; the ground truth is read once for the segmentation
and all its baselines.

The metrics name the volume they score (``volume``: the ground truth's source and split as
``prepare`` recorded them, else its file and dataset) and carry ``warnings`` for a segmentation
that is nearly one segment. The scores of the held-out test volumes (``melecole heldout``) are
added under ``test_<name>``, so one metrics file holds every test volume of a run.

With an MLflow run, or a ``picture`` file, the test volume is also drawn: its middle z-slice of
raw (when given), ground truth, segmentation and split / merge errors
(:func:`melecole.figures.evaluation_image`; which objects are split and which segments merge is
judged on the whole volume's table, then drawn on the slice, the only part read for it). The
run gets ``test/segmentation.png`` and, with baselines, ``test/baselines/<name>.png``.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import numpy as np

from melecole.errors import MelecoleError
from melecole.evaluate.dominance import dominance_warning, largest_share
from melecole.evaluate.metrics import scores_of_table
from melecole.evaluate.pair_counts import PairCounts
from melecole.evaluate.streaming import BLOCK_VOXELS, check_pair, count_pairs
from melecole.figures import evaluation_image, middle_slice, png_bytes, split_and_merged
from melecole.io import Volume, VolumeSpec, atomic_output, open_container, open_volume
from melecole.plots import with_vi_sum
from melecole.stages.variants import without_map_levels
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


def segmentation_facts(spec: VolumeSpec) -> dict:
    """What ``segment`` recorded with a segmentation: ``method`` (the variant of the main result)
    and ``validation`` (every variant's knob and pooled validation scores, and the choice), when
    it recorded them."""
    try:
        with open_container(spec.path) as container:
            attrs = dict(container.attrs)
    except MelecoleError:  # a TIFF stack: no attributes
        return {}
    facts = {}
    if spec.dataset == "segmentation" and isinstance(attrs.get("method"), str):
        facts["method"] = attrs["method"]
    calibration = attrs.get("calibration")
    if calibration is not None:
        facts["validation"] = without_map_levels(json.loads(calibration) if isinstance(calibration, str)
                                                 else dict(calibration))
    return facts


def volume_name(spec: VolumeSpec) -> str:
    """What a ground truth is: ``<source> <split>`` as ``prepare`` recorded it, else ``file:dataset``."""
    try:
        with open_container(spec.path) as container:
            attrs = dict(container.attrs)
    except MelecoleError:  # a TIFF stack: no attributes
        attrs = {}
    source, split = attrs.get("source"), attrs.get("split")
    return f"{source} {split}" if source and split else str(spec)


def held_out_metrics(folder: str | Path) -> dict[str, dict]:
    """``{"test_<name>": metrics}`` of every ``<folder>/<name>/metrics.json`` (``melecole heldout``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MelecoleError(f"{folder}: no folder of held-out results (run `melecole heldout` first)")
    found = {}
    for path in sorted(folder.glob("*/metrics.json")):
        try:
            found[f"test_{path.parent.name}"] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise MelecoleError(f"{path}: not valid JSON ({error})") from None
    return found


def evaluate(seg_spec: VolumeSpec, gt_spec: VolumeSpec, out: str | Path | None = None,
             run_file: str | Path | None = None, baselines: bool = False,
             block_voxels: int = BLOCK_VOXELS, held_out: str | Path | None = None,
             raw: VolumeSpec | None = None, picture: str | Path | None = None) -> dict:
    """Scores a segmentation; optionally writes the metrics JSON and adds them to the MLflow run.

    With ``baselines``, every other dataset of the segmentation file (the baselines that
    ``segment`` writes beside its main result) is scored too, under the key ``baselines``.
    ``block_voxels`` is the number of voxels of each volume read at a time. ``held_out`` is a
    folder written by ``melecole heldout``: its volumes' metrics join under ``test_<name>``.
    With the MLflow run or ``picture`` (a PNG file to write), the segmentation's picture of the
    middle z-slice is drawn; ``raw``, of the ground truth's shape, is its first panel.
    """
    tracker = (Tracker.resume(Path(run_file).read_text().strip())
               if run_file is not None and Path(run_file).is_file() else Tracker(False))
    draw = tracker.enabled or picture is not None
    with contextlib.ExitStack() as stack:
        ground_truth = stack.enter_context(open_volume(gt_spec, ndim=3))
        specs = [seg_spec]
        segmentations = [_opened(stack, seg_spec, ground_truth, gt_spec)]
        if baselines:
            specs += [VolumeSpec(seg_spec.path, name) for name in _other_datasets(seg_spec)]
            segmentations += [_opened(stack, spec, ground_truth, gt_spec) for spec in specs[1:]]
        raw_volume = _opened_raw(stack, raw, ground_truth) if draw and raw is not None else None
        try:
            counts = _counted(segmentations, ground_truth, block_voxels)
        except MelecoleError as error:
            raise MelecoleError(f"{segmentations[0].name} vs {ground_truth.name}: {error}") from None
        # Each picture costs one slice of each volume: the main one always, baselines for the run.
        drawn = len(segmentations) if tracker.enabled else 1
        images = _pictures(segmentations[:drawn], counts[:drawn], ground_truth, raw_volume) if draw else []
    tables = [count.table() for count in counts]
    warnings = [dominance_warning(str(spec), largest_share(table.sum(axis=1)), table.shape[0])
                for spec, table in zip(specs, tables)]
    scores = [scores_of_table(table) for table in tables]
    metrics: dict = {**with_vi_sum(scores[0]), "volume": volume_name(gt_spec), **segmentation_facts(seg_spec)}
    if baselines:
        metrics["baselines"] = {spec.dataset: with_vi_sum(score) for spec, score in zip(specs[1:], scores[1:])}
    metrics["warnings"] = [warning for warning in warnings if warning]
    if held_out is not None:
        metrics.update(held_out_metrics(held_out))
    if out is not None:
        with atomic_output(out) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    if picture is not None:
        with atomic_output(picture) as tmp:
            tmp.write_bytes(png_bytes(images[0]))
    if tracker.enabled:
        tracker.log_metrics(flat_metrics(metrics))
        _log_pictures(tracker, images[0], dict(zip((str(spec.dataset) for spec in specs[1:]), images[1:])))
        tracker.finish()
    return metrics


def _opened_raw(stack: contextlib.ExitStack, spec: VolumeSpec, ground_truth: Volume) -> Volume:
    """The raw volume of the picture, checked to have the ground truth's shape."""
    volume = stack.enter_context(open_volume(spec, ndim=3))
    if volume.shape != ground_truth.shape:
        raise MelecoleError(f"raw {volume.name} {volume.shape} and ground truth {ground_truth.name} "
                            f"{ground_truth.shape} differ in shape")
    return volume


def _counted(segmentations: list[Volume], ground_truth: Volume, block_voxels: int) -> list[PairCounts]:
    """The pair counts of each segmentation (the contingency table with its labels, which the
    picture needs), refusing a ground truth without a labelled voxel."""
    counts = count_pairs(segmentations, ground_truth, (0,), block_voxels)
    if counts and counts[0].voxels == 0:
        raise MelecoleError(f"ground truth {tuple(ground_truth.shape)} has no voxel outside the ignored labels "
                            "(0,); there is nothing to evaluate")
    return counts


def _pictures(segmentations: list[Volume], counts: list[PairCounts], ground_truth: Volume,
              raw: Volume | None) -> list[np.ndarray]:
    """The :func:`evaluation_image` of each segmentation at the middle z-slice, reading that slice only."""
    z = middle_slice(ground_truth.shape)
    region = (slice(z, z + 1), slice(0, ground_truth.shape[1]), slice(0, ground_truth.shape[2]))
    gt_slice = ground_truth.read(region)[0]  # (Y, X)
    raw_slice = None if raw is None else raw.read(region)[0]
    images = []
    for segmentation, count in zip(segmentations, counts):
        split, merged = split_and_merged(*count.pairs())
        images.append(evaluation_image(gt_slice, segmentation.read(region)[0], split, merged, raw_slice))
    return images


def _log_pictures(tracker: Tracker, main: np.ndarray, baselines: dict[str, np.ndarray]) -> None:
    """The run's artifacts ``test/segmentation.png`` and ``test/baselines/<name>.png``."""
    with tempfile.TemporaryDirectory() as folder:
        pictures = [("test", "segmentation", main)]
        pictures += [("test/baselines", name, image) for name, image in baselines.items()]
        for artifact_folder, name, image in pictures:
            path = Path(folder) / f"{name.replace('/', '_')}.png"
            path.write_bytes(png_bytes(image))
            tracker.log_artifact(path, artifact_folder)


def flat_metrics(metrics: dict, prefix: str = "test_") -> dict[str, float]:
    """The numbers of a metrics dict as flat MLflow keys: ``test_vi_split``, ``test_mws_vi_split``,
    ``test_<volume>_vi_split``, ``test_<volume>_mws_vi_split``, ..."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
        elif key == "baselines":
            for name, scores_of in value.items():
                flat.update(flat_metrics(scores_of, f"{prefix}{name}_"))
        elif key.startswith("test_") and isinstance(value, dict):
            flat.update(flat_metrics(value, f"{prefix}{key[len('test_'):]}_"))
    return flat
