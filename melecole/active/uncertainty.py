"""Voxel-wise uncertainty of a model's predictions, pure numpy: where proofreading teaches most.

Two kinds of evidence:

- disagreement of test-time-augmented views: the model sees the same voxels flipped or with
  its axes reordered; where its boundary or affinity probabilities change with the view it
  has not learnt what it sees (the variance of the probabilities across the views);
- entropy of the (view-averaged) probabilities: a boundary probability near 0.5 is a voxel the
  model cannot decide on.

Views are accumulated one at a time (:class:`ViewMoments`, weighted Welford), so a volume's
views never have to be held in memory together. No function changes its inputs.
"""

from __future__ import annotations

import numpy as np

SCORES = ("tta-disagreement", "boundary-entropy", "affinity-entropy")


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli probabilities ``p`` (any shape): 0 at 0 and 1, 1 at 0.5.

    Values are clipped to [0, 1] first. float32, the shape of ``p``.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(q > 0, q * np.log2(q), 0.0))
    return h.astype(np.float32)


class ViewMoments:
    """Running weighted mean and variance of ``(C, Z, Y, X)`` predictions across views.

    Weighted Welford updates in float64 (stable where all views agree to many digits). A
    weight of 0 leaves a voxel and channel out of that view (a pair whose partner lies outside
    the volume, say).

    Args:
        shape: ``(C, Z, Y, X)`` of every view.
    """

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(int(s) for s in shape)
        self._weight = np.zeros(self.shape, dtype=np.float64)
        self._mean = np.zeros(self.shape, dtype=np.float64)
        self._m2 = np.zeros(self.shape, dtype=np.float64)
        self._views = np.zeros(self.shape, dtype=np.int32)  # views with a positive weight

    def add(self, values: np.ndarray, weight: np.ndarray | None = None) -> None:
        """Adds one view; ``weight`` broadcasts against ``values`` (None: 1 everywhere)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != self.shape:
            raise ValueError(f"view of shape {values.shape}, expected {self.shape}")
        w = np.ones(self.shape) if weight is None else np.broadcast_to(np.asarray(weight, dtype=np.float64),
                                                                        self.shape)
        if (w < 0).any():
            raise ValueError("view weights must be >= 0")
        total = self._weight + w
        delta = values - self._mean
        step = np.divide(w * delta, total, out=np.zeros(self.shape), where=total > 0)
        self._mean += step
        self._m2 += w * delta * (values - self._mean)
        self._weight = total
        self._views += w > 0

    @property
    def views(self) -> np.ndarray:
        """int32 ``(C, Z, Y, X)``: how many views gave each value."""
        return self._views.copy()

    def mean(self) -> np.ndarray:
        """float32 ``(C, Z, Y, X)``: the weighted mean over the views (0 where none gave a value)."""
        return self._mean.astype(np.float32)

    def variance(self) -> np.ndarray:
        """float32 ``(C, Z, Y, X)``: the weighted population variance over the views (0 where
        fewer than two views gave a value)."""
        var = np.divide(self._m2, self._weight, out=np.zeros(self.shape), where=self._weight > 0)
        var[self._views < 2] = 0.0
        return np.maximum(var, 0.0).astype(np.float32)


def channel_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float32 ``(Z, Y, X)``: the mean over the valid channels of ``(C, Z, Y, X)`` values (0 where
    no channel is valid)."""
    valid = np.asarray(valid, dtype=bool)
    count = valid.sum(axis=0)
    total = np.where(valid, values, 0.0).sum(axis=0, dtype=np.float64)
    return np.divide(total, count, out=np.zeros(count.shape), where=count > 0).astype(np.float32)


def tta_disagreement(views: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Variance across test-time-augmented views, averaged over channels.

    Args:
        views: ``(V, C, Z, Y, X)`` (or ``(V, Z, Y, X)`` for one channel) probabilities of V views
            mapped back to the original frame.
        weights: the same shape (or broadcastable): 0 where a view gave no value.

    Returns:
        float32 ``(Z, Y, X)``: per voxel, the mean over channels (with at least two views) of the
        weighted variance across views. 0 where every view agrees; at most 0.25 for
        probabilities in [0, 1].
    """
    views = np.asarray(views, dtype=np.float64)
    if views.ndim == 4:
        views = views[:, None]
        if weights is not None and np.ndim(weights) == 4:
            weights = np.asarray(weights)[:, None]
    if views.ndim != 5:
        raise ValueError(f"views must be (V, C, Z, Y, X) or (V, Z, Y, X), got shape {views.shape}")
    weights = None if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float64), views.shape)
    moments = ViewMoments(views.shape[1:])
    for v in range(views.shape[0]):
        moments.add(views[v], None if weights is None else weights[v])
    return channel_mean(moments.variance(), moments.views >= 2)


def mean_entropy(probabilities: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """float32 ``(Z, Y, X)``: binary entropy (bits) of ``(C, Z, Y, X)`` (or ``(Z, Y, X)``)
    probabilities, averaged over the valid channels."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 3:
        probabilities = probabilities[None]
    if probabilities.ndim != 4:
        raise ValueError(f"probabilities must be (C, Z, Y, X) or (Z, Y, X), got shape {probabilities.shape}")
    valid = np.ones(probabilities.shape, dtype=bool) if valid is None else np.broadcast_to(valid, probabilities.shape)
    return channel_mean(binary_entropy(probabilities), valid)


def uncertainty_map(score: str, boundary: ViewMoments, affinities: ViewMoments) -> np.ndarray:
    """float32 ``(Z, Y, X)`` uncertainty of one of :data:`SCORES` from the views' moments.

    Args:
        score: ``tta-disagreement`` (variance across the views of the boundary and the
            nearest-neighbour affinities, averaged over those channels), ``boundary-entropy``
            (entropy of the view-averaged boundary) or ``affinity-entropy`` (entropy of the
            view-averaged nearest-neighbour affinities, averaged over channels).
        boundary: moments of the ``(1, Z, Y, X)`` boundary probabilities.
        affinities: moments of the ``(3, Z, Y, X)`` nearest-neighbour affinities (weight 0 where
            the partner lies outside the volume).
    """
    if score == "tta-disagreement":
        variance = np.concatenate([boundary.variance(), affinities.variance()])
        valid = np.concatenate([boundary.views, affinities.views]) >= 2
        return channel_mean(variance, valid)
    if score == "boundary-entropy":
        return mean_entropy(boundary.mean(), boundary.views > 0)
    if score == "affinity-entropy":
        return mean_entropy(affinities.mean(), affinities.views > 0)
    raise ValueError(f"unknown uncertainty score '{score}' ({', '.join(SCORES)})")
