"""Affinities mapped to the probability that a pair of voxels is one object, fitted per offset.

The embedding's affinity ``a = ((2 delta_d - d)+ / (2 delta_d))^2`` is a fixed function of the
distance that knows nothing of how far apart the network really places voxels of one neuron: on
the bundled validation volumes half of the pairs at ``a = 0.25`` are in one object. The Mutex
Watershed weighs attractive edges (``a``) against repulsive ones (``1 - a``) across offsets, so
the map matters. This module fits, per offset, ``P(one object | stored level)`` on labelled
validation pairs: counts per uint8 level (stored predictions have 256), then isotonic regression
(scikit-learn), weighted by the counts, so the map never decreases. The fitted map is a lookup
table ``(C, 256)`` of uint8 levels, applied to stored (or exactly decoded) predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from melecole.inference.encoding import PROBABILITY_SCALE, decode
from melecole.segment.affinities import shifted_pair

LEVELS = int(PROBABILITY_SCALE) + 1


def _levels(affinities: np.ndarray) -> np.ndarray:
    """uint8 levels of stored predictions (uint8, or float32 that are exactly decoded uint8)."""
    if affinities.dtype == np.uint8:
        return affinities
    levels = np.rint(np.asarray(affinities, dtype=np.float32) * np.float32(PROBABILITY_SCALE))
    encoded = levels.astype(np.uint8)
    if not np.array_equal(decode(encoded), affinities):
        raise ValueError("an affinity map applies to stored predictions (uint8 levels, value / 255), "
                         "not to arbitrary floats")
    return encoded


def pair_counts(volumes: Sequence[tuple[np.ndarray, np.ndarray]], offsets: Sequence[Sequence[int]]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(pairs in one object, all pairs) per offset and stored level, ``(C, 256)`` float64 each,
    over ``(affinities (C, Z, Y, X), labels (Z, Y, X))`` volumes; pairs touching label 0
    (unlabelled) or leaving the volume are not counted."""
    same = np.zeros((len(offsets), LEVELS))
    total = np.zeros((len(offsets), LEVELS))
    for affinities, labels in volumes:
        if affinities.shape[0] != len(offsets) or affinities.shape[1:] != labels.shape:
            raise ValueError(f"affinities {affinities.shape} do not match {len(offsets)} offsets over labels {labels.shape}")
        for channel, offset in enumerate(offsets):
            pair = shifted_pair(labels.shape, offset)
            if pair is None:
                continue
            ours, theirs = labels[pair[0]], labels[pair[1]]
            counted = (ours != 0) & (theirs != 0)
            levels = _levels(affinities[channel][pair[0]])[counted]
            total[channel] += np.bincount(levels, minlength=LEVELS)
            same[channel] += np.bincount(levels, weights=(ours == theirs)[counted], minlength=LEVELS)
    return same, total


def fit_affinity_map(volumes: Sequence[tuple[np.ndarray, np.ndarray]], offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """The per-offset map ``(C, 256)`` uint8: level -> ``P(one object | level)`` x 255, fitted on
    labelled volumes by isotonic regression (non-decreasing in the level). An offset without a
    counted pair keeps the identity."""
    from sklearn.isotonic import IsotonicRegression

    same, total = pair_counts(volumes, offsets)
    table = np.tile(np.arange(LEVELS, dtype=np.uint8), (len(offsets), 1))
    levels = np.arange(LEVELS, dtype=np.float64)
    for channel in range(len(offsets)):
        seen = total[channel] > 0
        if not seen.any():
            continue
        regression = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        regression.fit(levels[seen], same[channel][seen] / total[channel][seen], sample_weight=total[channel][seen])
        table[channel] = np.rint(regression.predict(levels) * PROBABILITY_SCALE).astype(np.uint8)
    return table


def apply_affinity_map(affinities: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The affinities through the per-offset lookup ``table`` (``(C, 256)`` levels): uint8 in,
    uint8 out; decoded float32 in, decoded float32 out. A new array."""
    table = np.asarray(table, dtype=np.uint8)
    if table.shape != (affinities.shape[0], LEVELS):
        raise ValueError(f"an affinity map {table.shape} for affinities {affinities.shape}: need ({affinities.shape[0]}, {LEVELS})")
    mapped = np.empty(affinities.shape, dtype=np.uint8)
    for channel in range(affinities.shape[0]):
        mapped[channel] = table[channel][_levels(affinities[channel])]
    return mapped if affinities.dtype == np.uint8 else decode(mapped)


def map_as_text(table: np.ndarray) -> list[str]:
    """A map as one hex string per offset (512 characters each): small enough for HDF5
    attributes (64 KiB) with dozens of offsets, where a JSON list of numbers is not."""
    return [bytes(np.asarray(row, dtype=np.uint8)).hex() for row in table]


def map_from_text(rows: Sequence[str]) -> np.ndarray:
    """The ``(C, 256)`` uint8 map of :func:`map_as_text`."""
    try:
        table = np.stack([np.frombuffer(bytes.fromhex(row), dtype=np.uint8) for row in rows])
    except (ValueError, TypeError) as error:
        raise ValueError(f"not an affinity map (one hex string of {LEVELS} levels per offset): {error}") from None
    if table.shape[1] != LEVELS:
        raise ValueError(f"an affinity map row holds {table.shape[1]} levels, not {LEVELS}")
    return table
