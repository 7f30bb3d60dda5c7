"""The mission's chain on embeddings that satisfy the metric-learning loss: embedding
affinities -> Mutex Watershed recover the labels. If this fails, no training can make the
default method work."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest

from melecole.data.synthetic import make_synthetic_volume
from melecole.evaluate import evaluate_segmentation
from melecole.segment.affinities import embedding_affinities
from melecole.segment.mutex import mutex_watershed

OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3],
           [-9, 0, 0], [0, -9, 0], [0, 0, -9], [-6, -6, 0], [0, -6, -6], [-6, 0, -6]]
DELTA_V, DELTA_D = 0.5, 1.5


def _ideal_embedding(labels: np.ndarray, rng: np.random.Generator, spread: float, dim: int = 16) -> np.ndarray:
    """Object centres at least 2 * delta_d apart (the loss's push term at zero), each voxel
    within ``spread`` of its centre (the pull term at zero for spread <= delta_v)."""
    ids = np.unique(labels)
    centres = np.zeros((0, dim))
    while len(centres) < len(ids):
        candidate = rng.normal(0, 4.0, dim)
        if not len(centres) or np.linalg.norm(centres - candidate, axis=1).min() > 2 * DELTA_D:
            centres = np.vstack([centres, candidate])
    index = np.searchsorted(ids, labels)  # (Z, Y, X)
    noise = rng.normal(size=(dim,) + labels.shape)
    noise *= spread * rng.random(labels.shape) / np.linalg.norm(noise, axis=0)  # |noise| < spread
    return (centres[index].transpose(3, 0, 1, 2) + noise).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_embeddings_that_satisfy_the_loss_give_the_labels_back(seed):
    _, labels = make_synthetic_volume((12, 48, 48), anisotropy=1.0, neurites=10, defects=False, seed=seed)
    labels = cc3d.connected_components(labels, connectivity=6, out_dtype=np.uint64)  # one piece per id
    rng = np.random.default_rng(seed)
    embedding = _ideal_embedding(labels, rng, spread=DELTA_V)  # anywhere in the zero-loss band
    affinities = embedding_affinities(embedding, OFFSETS, delta_d=DELTA_D)
    segmentation = mutex_watershed(affinities, OFFSETS, attractive=3, strides=(1, 1, 1))
    scores = evaluate_segmentation(segmentation, labels + np.uint64(1))  # every voxel labelled
    assert scores["vi_split"] + scores["vi_merge"] < 0.05, scores


def test_the_chain_fails_visibly_when_objects_are_not_pushed_apart():
    # The same labels with every centre at one point: nothing separates the objects.
    _, labels = make_synthetic_volume((12, 48, 48), anisotropy=1.0, neurites=10, defects=False, seed=0)
    labels = cc3d.connected_components(labels, connectivity=6, out_dtype=np.uint64)
    rng = np.random.default_rng(0)
    embedding = rng.normal(0, 0.05, (16,) + labels.shape).astype(np.float32)
    affinities = embedding_affinities(embedding, OFFSETS, delta_d=DELTA_D)
    segmentation = mutex_watershed(affinities, OFFSETS, attractive=3, strides=(1, 1, 1))
    scores = evaluate_segmentation(segmentation, labels + np.uint64(1))
    assert scores["vi_merge"] > 1.0, scores
