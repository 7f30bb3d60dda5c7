"""Calibration of every segmentation variant on the validation volumes, and the choice among them.

At the end of training, on the best weights' validation predictions (quantised as ``segment``
reads them), each variant of ``segment.choices`` gets its knob chosen on the pooled validation
volumes, robustly (:func:`melecole.stages.segment.robust_choice`):

- ``agglomeration-<source>``: the merge threshold among ``agglomeration.candidates``;
- ``mws-<source>``: the repulsive bias among ``mws_bias_candidates``
  (:func:`melecole.segment.mutex.bias_repulsive`), on the predicted affinities and on the
  per-offset map ``P(one object | affinity)`` fitted on the same volumes
  (:mod:`melecole.segment.affinity_map`, ``mws_map``); the better of the two is kept.

Then, one knob at a time at the choices before it: each ``mws-`` variant's repulsive-edge
strides among ``mws_stride_candidates`` (every edge, a grid, at random), and every variant's size
filter among ``min_size_candidates`` and ``min_size`` (an empty list keeps the parameters' ``strides`` and
``min_size``). These are plain minima: the candidates are few and not ordered along one scale.

A knob whose result collapses into one dominant segment on some volume is never chosen while
another is left (:func:`melecole.stages.segment.robust_choice`).

A knob fixed in the parameters (``agglomeration.threshold``, ``mws_bias``) is used as it is.
The variant with the lowest pooled VI sum at its knob is the choice that ``segment.method: auto``
segments with. No test volume is seen. The result is a plain dict, stored in the checkpoint and
copied by ``predict`` into the predictions' attributes::

    {"choice": "agglomeration-affinities",
     "variants": {"agglomeration-affinities": {"threshold": 0.35, "min_size": 100, "vi_split": ...,
                                               "vi_merge": ..., "arand": ..., "vi_sum": ...},
                  "mws-embedding": {"bias": 0.4, "map": ["00000305...", ...], "strides": [2, 2, 2],
                                    "randomize_strides": true, "min_size": 400, ...}, ...}}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from melecole.config import SegmentConfig
from melecole.errors import MelecoleError
from melecole.evaluate import evaluate_pooled
from melecole.plots import with_vi_sum
from melecole.segment.affinity_map import fit_affinity_map, map_as_text, map_from_text
from melecole.segment.postprocess import merge_small_segments
from melecole.stages.segment import Labelled, Metrics, calibrate, dominated, robust_choice, run_method
from melecole.stages.variants import needs_affinity_head, resolve_variant


def calibrate_bias(config: SegmentConfig, volumes: Sequence[Labelled], seed: int = 0,
                   affinity_map: np.ndarray | None = None) -> tuple[float, Metrics, dict[float, Metrics]]:
    """The Mutex Watershed's repulsive bias chosen on labelled volumes pooled (after
    ``affinity_map``, when given).

    Returns:
        (bias, its metrics, metrics of every candidate bias); a fixed ``config.mws_bias`` is the
        only candidate.
    """
    candidates = [config.mws_bias] if config.mws_bias is not None else config.mws_bias_candidates
    table, degenerate = {}, set()
    for bias in candidates:
        segmentations = [run_method("mws", config, predictions, None, seed, bias=bias, affinity_map=affinity_map)
                         for predictions, _ in volumes]
        table[bias] = evaluate_pooled([(segmentation, labels) for segmentation, (_, labels) in zip(segmentations, volumes)])
        if dominated(segmentations):
            degenerate.add(bias)
    best = robust_choice({b: m["vi_split"] + m["vi_merge"] for b, m in table.items()}, config.mws_bias_margin,
                         degenerate)
    return best, table[best], table


def calibrate_mutex(config: SegmentConfig, volumes: Sequence[Labelled], seed: int = 0) -> dict:
    """A Mutex Watershed variant's knobs: the bias, on the predicted affinities and (``mws_map``
    auto or fitted) on the per-offset map fitted on the same volumes; the better of the two.
    Returns ``{"bias": b, **metrics}`` plus ``"map"`` (:func:`~melecole.segment.affinity_map.map_as_text`)
    when the map is used."""
    key = "affinities" if config.mws_source == "embedding" else "predicted_affinities"
    tried = []
    if config.mws_map != "fitted":
        tried.append((None, *calibrate_bias(config, volumes, seed)[:2]))
    if config.mws_map != "none":
        table = fit_affinity_map([(predictions[key], labels) for predictions, labels in volumes], config.offsets)
        tried.append((table, *calibrate_bias(config, volumes, seed, affinity_map=table)[:2]))
    table, bias, metrics = min(tried, key=lambda t: t[2]["vi_split"] + t[2]["vi_merge"])
    return {"bias": bias, **with_vi_sum(metrics), **({"map": map_as_text(table)} if table is not None else {})}


def _lowest(table: dict, degenerate: set) -> object:
    """The candidate with the lowest VI sum, collapsed ones only when nothing else is left;
    ties go to the earlier candidate."""
    order = list(table)
    return min(order, key=lambda k: (k in degenerate, table[k]["vi_split"] + table[k]["vi_merge"], order.index(k)))


def unfiltered(name: str, config: SegmentConfig, volumes: Sequence[Labelled], knobs: dict,
               seed: int = 0) -> list[np.ndarray]:
    """The segmentations of a variant at its calibrated knobs, before the size filter."""
    method, resolved = resolve_variant(name, config)
    resolved = resolved.model_copy(update={"min_size": 0})
    if method == "agglomeration":
        return [run_method(method, resolved, predictions, knobs["threshold"], seed) for predictions, _ in volumes]
    if "strides" in knobs:
        resolved = resolved.model_copy(update={"strides": tuple(knobs["strides"]),
                                               "randomize_strides": knobs["randomize_strides"]})
    table = map_from_text(knobs["map"]) if "map" in knobs else None
    return [run_method(method, resolved, predictions, None, seed, bias=knobs["bias"], affinity_map=table)
            for predictions, _ in volumes]


def calibrate_strides(name: str, config: SegmentConfig, volumes: Sequence[Labelled], knobs: dict,
                      seed: int = 0) -> dict:
    """A Mutex Watershed variant's repulsive-edge strides chosen among ``mws_stride_candidates``
    at its bias and map (filtered at ``min_size``); ``knobs`` with ``strides``,
    ``randomize_strides`` and the metrics of that choice (unchanged for no candidates)."""
    if not config.mws_stride_candidates:
        return knobs
    table, degenerate = {}, set()
    for choice in config.mws_stride_candidates:
        tried = {**knobs, "strides": list(choice.strides), "randomize_strides": choice.randomize}
        segmentations = [merge_small_segments(s, config.min_size)
                         for s in unfiltered(name, config, volumes, tried, seed)]
        table[(choice.strides, choice.randomize)] = evaluate_pooled(
            [(segmentation, labels) for segmentation, (_, labels) in zip(segmentations, volumes)])
        if dominated(segmentations):
            degenerate.add((choice.strides, choice.randomize))
    strides, randomize = _lowest(table, degenerate)
    return {**knobs, "strides": list(strides), "randomize_strides": randomize, **with_vi_sum(table[(strides, randomize)])}


def calibrate_size(name: str, config: SegmentConfig, volumes: Sequence[Labelled], knobs: dict,
                   seed: int = 0) -> dict:
    """A variant's size filter chosen among ``min_size_candidates`` and ``min_size`` (so never
    worse on validation than the parameters' filter) at its other knobs; ``knobs`` with
    ``min_size`` and the metrics of that choice (unchanged for no candidates)."""
    if not config.min_size_candidates:
        return knobs
    raw = unfiltered(name, config, volumes, knobs, seed)
    table, degenerate = {}, set()
    for size in sorted({*config.min_size_candidates, config.min_size}):
        segmentations = [merge_small_segments(s, size) for s in raw]
        table[size] = evaluate_pooled([(s, labels) for s, (_, labels) in zip(segmentations, volumes)])
        if dominated(segmentations):
            degenerate.add(size)
    size = _lowest(table, degenerate)
    return {**knobs, "min_size": int(size), **with_vi_sum(table[size])}


def calibrate_variants(config: SegmentConfig, volumes: Sequence[Labelled], seed: int = 0,
                       also: Sequence[str] = ()) -> dict:
    """Every variant of ``config.choices`` calibrated on ``(predictions, labels)`` volumes, and
    the best of them (see the module docstring). Variants of the affinity head are left out when
    the predictions hold none. The variants ``also`` are calibrated too but not chosen from.

    Raises:
        MelecoleError: if no variant of ``config.choices`` can run on these predictions.
    """
    head = all("predicted_affinities" in predictions for predictions, _ in volumes)
    names = [name for name in config.choices if head or not needs_affinity_head(name, config)]
    if not names:
        raise MelecoleError(f"segment.choices {config.choices} all need the affinity head, which the model has "
                            "not (model.affinity_head: false); add an -embedding variant")
    extra = [name for name in dict.fromkeys(also) if name not in names and name != "watershed"
             and (head or not needs_affinity_head(name, config))]
    variants = {}
    for name in names + extra:
        method, resolved = resolve_variant(name, config)
        if method == "agglomeration":
            threshold = resolved.agglomeration.threshold
            if threshold is None:
                threshold, metrics, _ = calibrate(resolved, volumes)
            else:
                metrics = evaluate_pooled([(run_method(method, resolved, predictions, threshold, seed), labels)
                                           for predictions, labels in volumes])
            knobs = {"threshold": threshold, **with_vi_sum(metrics)}
        else:
            knobs = calibrate_strides(name, config, volumes, calibrate_mutex(resolved, volumes, seed), seed)
        variants[name] = calibrate_size(name, config, volumes, knobs, seed)
    choice = min(names, key=lambda name: (variants[name]["vi_sum"], names.index(name)))
    return {"choice": choice, "variants": variants}
