"""Segmentation variants (a method with its input) and the knobs each runs with.

A variant names a method and the affinities it reads: ``agglomeration-affinities`` (the affinity
head's nearest neighbours), ``agglomeration-embedding``, ``agglomeration-boundary``,
``mws-embedding``, ``mws-affinities``, ``watershed``; the plain names ``agglomeration`` and
``mws`` take their input from ``segment.agglomeration.source`` and ``segment.mws_source``.
:class:`Knobs` gives each variant the threshold, bias, affinity map, strides and size filter it
runs with: the parameters' when set, else the validation calibration ``predict`` copied from the
checkpoint (:mod:`melecole.stages.calibration`).
"""

from __future__ import annotations

import json

import numpy as np

from melecole.config import SegmentConfig
from melecole.errors import MelecoleError
from melecole.segment.affinity_map import map_from_text


def resolve_variant(name: str, config: SegmentConfig) -> tuple[str, SegmentConfig]:
    """The method of a variant name and the config with that variant's input: ``mws-affinities``
    -> (``mws``, config with ``mws_source: affinities``); plain method names keep the config."""
    if name in ("agglomeration", "mws", "watershed"):
        return name, config
    method, _, source = name.partition("-")
    if method == "agglomeration" and source in ("affinities", "embedding", "boundary"):
        return method, config.model_copy(
            update={"agglomeration": config.agglomeration.model_copy(update={"source": source})})
    if method == "mws" and source in ("affinities", "embedding"):
        return method, config.model_copy(update={"mws_source": source})
    raise MelecoleError(f"unknown segmentation method '{name}'")


def variant_name(name: str, config: SegmentConfig) -> str:
    """The full name of a method or variant: ``agglomeration`` -> ``agglomeration-<source>``."""
    method, resolved = resolve_variant(name, config)
    if method == "agglomeration":
        return f"agglomeration-{resolved.agglomeration.source}"
    if method == "mws":
        return f"mws-{resolved.mws_source}"
    return method


def needs_affinity_head(name: str, config: SegmentConfig) -> bool:
    """Whether a variant reads the affinity head's predictions."""
    return variant_name(name, config).endswith("-affinities")


def validated_method(config: SegmentConfig) -> str:
    """The method scored at every validation during training: ``segment.method``, the configured
    agglomeration for ``auto``."""
    return "agglomeration" if config.method == "auto" else config.method


def stored_calibration(attrs) -> dict | None:
    """The validation calibration ``predict`` copied from the checkpoint, or None (older
    checkpoints, predictions from elsewhere)."""
    calibration = attrs.get("calibration")
    if calibration is None:
        return None
    return json.loads(calibration) if isinstance(calibration, str) else dict(calibration)


class Knobs:
    """The agglomeration threshold and Mutex Watershed bias of each variant: the parameters' when
    set, else the validation calibration's, else (older checkpoints) the one stored threshold for
    the configured agglomeration and bias 0."""

    def __init__(self, config: SegmentConfig, calibration: dict | None, threshold: float | None):
        self.config, self.variants, self.threshold = config, (calibration or {}).get("variants", {}), threshold
        self.choice = (calibration or {}).get("choice")

    def main(self) -> str:
        """The main result's variant: ``segment.method``, or for ``auto`` the validation choice
        (the configured agglomeration without one)."""
        if self.config.method != "auto":
            return variant_name(self.config.method, self.config)
        return self.choice or variant_name("agglomeration", self.config)

    def of(self, name: str) -> tuple[float | None, float]:
        """(threshold, bias) of a variant (its affinity map: :meth:`map_of`)."""
        full = variant_name(name, self.config)
        calibrated = self.variants.get(full, {})
        threshold = self.config.agglomeration.threshold
        if threshold is None:
            threshold = calibrated.get("threshold")
        if threshold is None and full == variant_name("agglomeration", self.config):
            threshold = self.threshold
        bias = self.config.mws_bias if self.config.mws_bias is not None else calibrated.get("bias", 0.0)
        return threshold, float(bias)

    def config_of(self, name: str) -> SegmentConfig:
        """The segment parameters a variant runs with: the calibration's size filter (and, for a
        Mutex Watershed, strides) where the parameters list candidates for them, else the
        parameters' ``min_size`` / ``strides`` as set."""
        calibrated, update = self.variants.get(variant_name(name, self.config), {}), {}
        if self.config.min_size_candidates and "min_size" in calibrated:
            update["min_size"] = int(calibrated["min_size"])
        if self.config.mws_stride_candidates and "strides" in calibrated:
            update.update(strides=tuple(calibrated["strides"]), randomize_strides=bool(calibrated["randomize_strides"]))
        return self.config.model_copy(update=update)

    def map_of(self, name: str) -> np.ndarray | None:
        """The fitted affinity map of a Mutex Watershed variant, or None (the predicted affinities):
        the calibration's choice under ``mws_map: auto``, never under ``none``."""
        table = self.variants.get(variant_name(name, self.config), {}).get("map")
        if self.config.mws_map == "none" or table is None:
            if self.config.mws_map == "fitted" and resolve_variant(name, self.config)[0] == "mws":
                raise MelecoleError(f"segment.mws_map is 'fitted' but the predictions carry no affinity map "
                                    f"fitted on validation for {variant_name(name, self.config)}")
            return None
        return map_from_text(table)


def without_map_levels(calibration: dict) -> dict:
    """A calibration with each fitted affinity map (256 levels per offset) named ``"fitted"``
    instead of listed: for metrics files, manifests and cards."""
    return {**calibration, "variants": {name: {**scores, **({"map": "fitted"} if "map" in scores else {})}
                                        for name, scores in calibration.get("variants", {}).items()}}


def knob_label(scores: dict) -> str:
    """A variant's knobs as a reader sees them: ``threshold 0.35, size 100`` or ``bias -0.2,
    fitted map, strides 2x2x2 random, size 400``."""
    parts = []
    if scores.get("threshold") is not None:
        parts.append(f"threshold {scores['threshold']:g}")
    elif scores.get("bias") is not None:
        parts.append(f"bias {scores['bias']:g}" + (", fitted map" if scores.get("map") else ""))
    strides = scores.get("strides")
    if strides is not None and (max(strides) > 1 or scores.get("randomize_strides")):
        parts.append("strides " + "x".join(str(s) for s in strides) + (" random" if scores.get("randomize_strides") else ""))
    if scores.get("min_size") is not None:
        parts.append(f"size {scores['min_size']}")
    return ", ".join(parts)


def checkpoint_facts(config: SegmentConfig, calibration: dict, final: dict) -> dict:
    """What a checkpoint records of its calibration: every variant's knobs and scores, the main
    method's pooled validation scores, and the configured agglomeration's threshold (read by
    checkpoints' older users)."""
    facts = {"val_vi_split": final["vi_split"], "val_vi_merge": final["vi_merge"], "val_arand": final["arand"],
             "calibration": calibration}
    threshold = calibration["variants"].get(variant_name("agglomeration", config), {}).get("threshold")
    if threshold is not None:
        facts["agglomeration_threshold"] = threshold
    return facts

