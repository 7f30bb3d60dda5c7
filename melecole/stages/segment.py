"""segment: predictions (affinities, boundary) -> segmentation by the configured method + baselines.

Methods:
- ``agglomeration``: fragments and hierarchical agglomeration of nearest-neighbour affinities
  (from the affinity head, the embedding or the boundary head), merged up to a threshold chosen
  on the validation volumes at the end of training.
- ``mws``: the Mutex Watershed on the embedding's or the affinity head's affinities at all
  offsets (optionally seeded with the cores of the boundary map's interior), with a repulsive
  bias chosen on the validation volumes, then small segments merged into their largest-contact
  neighbour.
- ``watershed``: the seeded watershed on the boundary map (classical baseline).
- ``auto`` (default): the variant that won on pooled validation at the end of training
  (:mod:`melecole.stages.calibration`).

A variant names a method with its input: ``agglomeration-affinities``, ``agglomeration-embedding``,
``mws-embedding``, ``mws-affinities``, ... (:func:`resolve_variant`); baselines are variants, each
written under its own name with its own calibrated knob.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from melecole.config import SegmentConfig
from melecole.errors import MelecoleError
from melecole.evaluate import evaluate_pooled
from melecole.evaluate.dominance import DOMINANT_SHARE, dominance_warning, largest_share, segment_sizes
from melecole.inference.encoding import decode
from melecole.io import open_container, write_volumes
from melecole.segment.affinity_map import apply_affinity_map
from melecole.segment.agglomerate import agglomerate, boundary_affinities
from melecole.segment.mutex import bias_repulsive, mutex_watershed
from melecole.segment.postprocess import merge_small_segments
from melecole.segment.seeds import boundary_seeds
from melecole.segment.watershed import boundary_watershed
from melecole.stages.variants import Knobs, needs_affinity_head, resolve_variant, stored_calibration, validated_method, variant_name


Predictions = dict[str, np.ndarray]  # affinities (C,Z,Y,X), boundary (Z,Y,X), maybe predicted_affinities
Labelled = tuple[Predictions, np.ndarray]  # a validation volume's predictions and its labels (Z,Y,X)
Metrics = dict[str, float]


def _agglomeration_input(config: SegmentConfig, predictions: Predictions) -> np.ndarray:
    source = config.agglomeration.source
    if source == "boundary":
        return boundary_affinities(predictions["boundary"])
    if source == "embedding":
        return predictions["affinities"][:3]
    return _predicted(predictions, "segment.agglomeration.source")[:3]


def _predicted(predictions: Predictions, key: str) -> np.ndarray:
    if "predicted_affinities" not in predictions:
        raise MelecoleError(f"{key} is 'affinities' but the predictions hold no predicted_affinities "
                            "(train with model.affinity_head: true)")
    return predictions["predicted_affinities"]


def run_method(method: str, config: SegmentConfig, predictions: Predictions, threshold: float | None,
               seed: int = 0, bias: float = 0.0, affinity_map: np.ndarray | None = None) -> np.ndarray:
    """One segmentation (Z, Y, X) uint64 of ``method`` (a method or a variant name, see
    :func:`resolve_variant`) from the predictions of a volume; ``threshold`` is the
    agglomeration's, ``bias`` the Mutex Watershed's repulsive bias (:func:`bias_repulsive`),
    applied after ``affinity_map`` (:func:`melecole.segment.affinity_map.apply_affinity_map`)."""
    method, config = resolve_variant(method, config)
    if method == "agglomeration":
        if threshold is None:
            raise MelecoleError("segment.agglomeration.threshold is null and the predictions carry no "
                                "threshold chosen in training; set one or predict with a melecole checkpoint")
        fragments = agglomerate(_agglomeration_input(config, predictions), [threshold],
                                config.agglomeration.scoring)[0]
        return merge_small_segments(fragments, config.min_size)
    boundary = predictions["boundary"]
    if method == "mws":
        mask = boundary < config.foreground_threshold if config.foreground_threshold < 1.0 else None
        affinities = (predictions["affinities"] if config.mws_source == "embedding"
                      else _predicted(predictions, "segment.mws_source"))
        seeds = (boundary_seeds(boundary, config.watershed.threshold, config.seed_distance)
                 if config.mws_seeds == "boundary" else None)
        if affinity_map is not None:
            affinities = apply_affinity_map(affinities, affinity_map)
        affinities = bias_repulsive(affinities, config.attractive, bias)
        segmentation = mutex_watershed(affinities, config.offsets, attractive=config.attractive,
                                       strides=config.strides, randomize_strides=config.randomize_strides,
                                       mask=mask, seed=seed, seeds=seeds)
        return merge_small_segments(segmentation, config.min_size)
    if method == "watershed":
        ws = config.watershed
        return boundary_watershed(boundary, ws.threshold, ws.sigma_seeds, ws.min_size)
    raise MelecoleError(f"unknown segmentation method '{method}'")


def calibrate(config: SegmentConfig, volumes: Sequence[Labelled]) -> tuple[float, Metrics, dict[float, Metrics]]:
    """Chooses the agglomeration threshold on labelled volumes (see :func:`robust_choice`).

    Args:
        volumes: ``(predictions, labels)`` per validation volume; every candidate threshold is
            scored on all of them pooled (:func:`melecole.evaluate.evaluate_pooled`).

    Returns:
        (threshold, its metrics, metrics of every candidate threshold).
    """
    candidates = config.agglomeration.candidates
    per_volume = [agglomerate(_agglomeration_input(config, predictions), candidates, config.agglomeration.scoring)
                  for predictions, _ in volumes]
    ground_truths = [gt for _, gt in volumes]
    table, degenerate = {}, set()
    # zip(*per_volume): for each candidate, its segmentation of every volume.
    for t, segmentations in zip(candidates, zip(*per_volume)):
        segmentations = [merge_small_segments(segmentation, config.min_size) for segmentation in segmentations]
        table[t] = evaluate_pooled(list(zip(segmentations, ground_truths)))
        if dominated(segmentations):
            degenerate.add(t)
    best = robust_choice({t: m["vi_split"] + m["vi_merge"] for t, m in table.items()}, config.agglomeration.margin,
                         degenerate)
    return best, table[best], table


def dominated(segmentations: Sequence[np.ndarray]) -> bool:
    """Whether one segment holds at least :data:`DOMINANT_SHARE` of some volume: a collapse."""
    return any(largest_share(segment_sizes(segmentation)) >= DOMINANT_SHARE for segmentation in segmentations)


def robust_choice(scores: dict[float, float], margin: float, degenerate: Collection[float] = ()) -> float:
    """The knob whose worst score over the knobs within ``+-margin`` of it is lowest.

    The VI of an agglomeration rises steeply once a threshold starts merging large objects, and
    where that cliff lies differs between volumes. Choosing by the worst neighbour keeps away
    from it: the choice stays good if the best threshold of another volume is up to ``margin``
    away. ``margin=0`` is the plain minimum. Ties go to the smaller plain score, then the
    smaller knob.

    ``degenerate`` knobs (results that collapsed into one dominant segment) count as infinitely
    bad: everything merged into one segment scores the ground truth's entropy as VI, which can
    beat an honest but over-split result, and is never what a user wants. They and their
    neighbours within the margin are chosen only when nothing else is left.
    """
    tolerance = 1e-9
    scored = {knob: (math.inf if knob in degenerate else score) for knob, score in scores.items()}

    def worst(t: float) -> float:
        return max(score for other, score in scored.items() if abs(other - t) <= margin + tolerance)

    return min(scored, key=lambda t: (worst(t), scored[t], scores[t], t))


def score_on(config: SegmentConfig, volumes: Sequence[Labelled], seed: int = 0) -> Metrics:
    """Validation metrics of the configured method on ``(predictions, labels)`` volumes, pooled
    (the agglomeration's at its best threshold, returned under ``threshold``). ``auto`` scores
    the configured agglomeration: quick enough for every validation during training, while the
    choice among all variants is made once, at the end (:mod:`melecole.stages.calibration`)."""
    method = validated_method(config)
    if method == "agglomeration" and config.agglomeration.threshold is None:
        threshold, metrics, _ = calibrate(config, volumes)
        return {**metrics, "threshold": threshold}
    return evaluate_pooled([(run_method(method, config, predictions, config.agglomeration.threshold, seed,
                                        bias=config.mws_bias or 0.0), labels)
                            for predictions, labels in volumes])


def _stored(container) -> tuple[list[tuple[int, int, int]] | None, float | None]:
    attrs = container.attrs
    offsets, threshold = attrs.get("offsets"), attrs.get("agglomeration_threshold")
    offsets = [tuple(o) for o in (json.loads(offsets) if isinstance(offsets, str) else offsets)] if offsets is not None else None
    return offsets, (float(threshold) if threshold is not None else None)


def _checked_predictions(config: SegmentConfig, path: Path):
    """The predictions container, its stored threshold, after checking offsets and shapes."""
    container = open_container(path)
    for name in ("affinities", "boundary"):
        if name not in container.names():
            raise MelecoleError(f"{path}: no dataset '{name}' (datasets: {', '.join(container.names()) or 'none'}); "
                                "is this the output of melecole predict?")
    affinities, boundary = container.dataset("affinities"), container.dataset("boundary")
    offsets, calibrated = _stored(container)
    if offsets is not None and offsets != [tuple(o) for o in config.offsets]:
        raise MelecoleError(f"{path}: affinities were computed at offsets {offsets}, "
                            f"but segment.offsets is {[tuple(o) for o in config.offsets]}; predict again")
    if affinities.ndim != 4 or affinities.shape[0] != len(config.offsets) or affinities.shape[1:] != boundary.shape:
        raise MelecoleError(f"{path}: affinities {affinities.shape} and boundary {boundary.shape} do not "
                            f"match {len(config.offsets)} offsets over one volume")
    return container, calibrated


def _runnable(name: str, config: SegmentConfig, knobs: Knobs, predictions: Predictions) -> str | None:
    """Why a baseline cannot run here (no threshold, no affinity head), or None."""
    method, _ = resolve_variant(name, config)
    if needs_affinity_head(name, config) and "predicted_affinities" not in predictions:
        return "the predictions hold no predicted_affinities"
    if method == "agglomeration" and knobs.of(name)[0] is None:
        return "no threshold was chosen for it on validation and segment.agglomeration.threshold is null"
    return None


def segment(config: SegmentConfig, predictions: str | Path, out: str | Path, seed: int = 0,
            blockwise: bool = False, scheduling=None, block: tuple[int, int, int] | None = None,
            context: int = 8, chunks: tuple[int, int, int] = (64, 64, 64)) -> dict:
    """Writes dataset ``segmentation`` (the configured method) and one dataset per baseline.

    The offsets stored with the affinities must match ``config.offsets``; the agglomeration
    threshold is ``config.agglomeration.threshold`` or, when that is null, the one the
    checkpoint chose on the validation volume. Stored uint8 probabilities are read back as
    float32 (value / 255).

    With ``blockwise``, the agglomeration runs block by block on daisy and is stitched through
    the graph of fragments (:mod:`melecole.blockwise.segment`); baselines are not computed.
    """
    path = Path(predictions)
    container, calibrated = _checked_predictions(config, path)
    knobs = Knobs(config, stored_calibration(container.attrs), calibrated)
    main = knobs.main()
    threshold, bias = knobs.of(main)
    if blockwise:
        if config.method == "auto" and main != variant_name("agglomeration", config):
            raise MelecoleError(f"segment --blockwise runs the agglomeration, but segment.method 'auto' chose "
                                f"'{main}' on validation; set segment.method: agglomeration to segment blockwise")
        config = knobs.config_of(main)
        if config.method == "auto":
            config = config.model_copy(update={"method": "agglomeration"})
        return _segment_blockwise(config, container, path, Path(out), threshold, scheduling, block, context, chunks)
    predictions = {"affinities": decode(container.dataset("affinities").read()),
                   "boundary": decode(container.dataset("boundary").read())}
    if "predicted_affinities" in container.names():
        predictions["predicted_affinities"] = decode(container.dataset("predicted_affinities").read())
    outputs, seconds, used, warnings = {}, {}, {}, []
    baselines = [b for b in dict.fromkeys(config.baselines) if variant_name(b, config) != main]
    for name in [main] + baselines:
        why_not = _runnable(name, config, knobs, predictions) if name != main else None
        if why_not is not None:
            warnings.append(f"baseline {name} skipped: {why_not}")
            continue
        start = time.perf_counter()
        outputs["segmentation" if name == main else name] = run_variant(name, knobs, predictions, seed)
        seconds[name] = round(time.perf_counter() - start, 3)
        used[name] = _used_knobs(name, knobs)
    attrs = {"source": str(path), "method": main, "method_setting": config.method,
             "baselines": json.dumps([b for b in baselines if b in outputs]), "knobs": json.dumps(used)}
    if knobs.variants:
        attrs["calibration"] = json.dumps({"choice": knobs.choice, "variants": knobs.variants})
    if threshold is not None and main.startswith("agglomeration"):
        attrs["agglomeration_threshold"] = threshold
    write_volumes(out, outputs, attrs, voxel_size=container.dataset("boundary").voxel_size)
    for name, segmentation in outputs.items():
        sizes = segment_sizes(segmentation)
        warnings.append(dominance_warning(f"{out}:{name}", largest_share(sizes), len(sizes)))
    return {"method": main, "seconds": seconds, "segments": int(outputs["segmentation"].max()),
            "threshold": threshold if main.startswith("agglomeration") else None, "knobs": used,
            "warnings": [warning for warning in warnings if warning]}


def run_variant(name: str, knobs: Knobs, predictions: Predictions, seed: int = 0) -> np.ndarray:
    """One variant's segmentation of a volume's predictions at the knobs it runs with
    (:class:`~melecole.stages.variants.Knobs`: threshold, bias, affinity map, strides, size filter)."""
    threshold, bias = knobs.of(name)
    return run_method(name, knobs.config_of(name), predictions, threshold, seed, bias=bias,
                      affinity_map=knobs.map_of(name))


def _used_knobs(name: str, knobs: Knobs) -> dict:
    """The knobs a variant ran with, as the segmentation file and the stage's summary record them."""
    config, (threshold, bias) = knobs.config_of(name), knobs.of(name)
    method, _ = resolve_variant(name, config)
    fitted = knobs.map_of(name) is not None
    return {"agglomeration": {"threshold": threshold, "min_size": config.min_size},
            "mws": {"bias": bias, "map": "fitted" if fitted else "none", "strides": list(config.strides),
                    "randomize_strides": config.randomize_strides, "min_size": config.min_size},
            "watershed": {"min_size": config.watershed.min_size}}.get(method, {})


# Peak memory of one segment worker per voxel of its block (context of 8 voxels included):
# 114 bytes measured on a 64 x 256 x 256 block of over-segmented fragments (1.5 boundary voxel
# pairs per voxel, the fragment step the peak), rounded up.
SEGMENT_BYTES_PER_VOXEL = 120


def _segment_blockwise(config: SegmentConfig, container, path: Path, out: Path, threshold: float | None,
                       scheduling, block, context: int, chunks) -> dict:
    from melecole.blockwise.geometry import aligned_block, automatic_block
    from melecole.blockwise.run import Scheduling
    from melecole.blockwise.segment import segment_in_blocks

    if config.method != "agglomeration" or config.agglomeration.scoring != "mean":
        raise MelecoleError(f"segment --blockwise runs segment.method 'agglomeration' with scoring 'mean' (got "
                            f"'{config.method}', '{config.agglomeration.scoring}'); run the others on the whole volume")
    if threshold is None:
        raise MelecoleError("segment.agglomeration.threshold is null and the predictions carry no threshold chosen "
                            "in training; set one")
    if out.suffix != ".zarr":
        raise MelecoleError(f"{out}: a blockwise segmentation writes a zarr store (several processes write at "
                            "once); name the output *.zarr")
    shape = container.dataset("boundary").shape
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape))
    block = aligned_block(block, chunks, "segment block") if block is not None else automatic_block(
        shape, chunks, bytes_per_voxel=SEGMENT_BYTES_PER_VOXEL, budget_bytes=2 * 2**30)
    if context < 0:
        raise MelecoleError(f"segment --context {context} must be 0 or more voxels")
    attrs = {"source": str(path), "method": "agglomeration", "baselines": "[]", "blockwise": True,
             "agglomeration_threshold": threshold}
    job = {"stage": "segment", "predictions": str(path.resolve()), "predictions_attrs": dict(container.attrs),
           "shape": list(shape), "segment": config.model_dump(mode="json"), "threshold": threshold,
           "block": list(block), "context": context, "chunks": list(chunks)}
    start = time.perf_counter()
    figures = segment_in_blocks(path, out, config.agglomeration.source, threshold, config.min_size, block, context,
                                chunks, scheduling or Scheduling(), job, attrs)
    return {"seconds": {"agglomeration": round(time.perf_counter() - start, 3)}, "threshold": threshold,
            "block": list(block), **figures}
