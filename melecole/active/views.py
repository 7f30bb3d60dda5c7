"""A volume through the model once per test-time-augmented view, keeping the views apart.

Prediction averages the views (:class:`melecole.inference.region.TilePredictor`); uncertainty
needs each view on its own. :class:`OneView` is the same tile predictor restricted to one
transform, and every view runs through :func:`melecole.inference.region.predict_region` on the
volume's global tile grid, exactly as ``melecole predict`` does with that one transform. Only
the moments of the views are kept (:class:`melecole.active.uncertainty.ViewMoments`): boundary
probabilities and the nearest-neighbour affinities (the affinity head's when the model has one,
as the default agglomeration uses, else the embedding's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from melecole.active.uncertainty import ViewMoments
from melecole.inference.region import TilePredictor, predict_region, volume_pairs
from melecole.inference.transforms import Transform, augmentations
from melecole.inference.volume import whole_volume_grid

IDENTITY: Transform = ((0, 1, 2), ())


class OneView(TilePredictor):
    """:class:`TilePredictor` running the model in one test-time frame only (``transform``)."""

    def __init__(self, model: torch.nn.Module, patch: Sequence[int], offsets, delta_d: float, norm: str,
                 transform: Transform, metric: str = "distance"):
        super().__init__(model, patch, offsets, delta_d, norm, "none", metric)
        self.transforms = [transform]
        # A transformed frame remaps the head's channels; where it gives no value the blender must know.
        self.head_votes_everywhere = transform == IDENTITY


def nearest_neighbours(offsets: Sequence[Sequence[int]]) -> list[int]:
    """Indices of the offsets one voxel along one axis, in z, y, x order (the agglomeration's input)."""
    found = {}
    for index, offset in enumerate(offsets):
        offset = tuple(int(d) for d in offset)
        if sum(abs(d) for d in offset) == 1:
            found.setdefault(next(a for a in range(3) if offset[a]), index)
    if len(found) != 3:
        raise ValueError(f"segment.offsets {[list(o) for o in offsets]} need one nearest-neighbour offset per axis")
    return [found[a] for a in range(3)]


def view_moments(model: torch.nn.Module, raw: np.ndarray, patch: Sequence[int], overlap: Sequence[int],
                 batch_size: int, offsets: Sequence[Sequence[int]], delta_d: float, norm: str, augment: str,
                 metric: str = "distance", on_view: Callable[[int, int], None] | None = None
                 ) -> tuple[ViewMoments, ViewMoments]:
    """Moments over the test-time views of a normalised ``(Z, Y, X)`` volume's predictions.

    Args:
        model: the U-Net (eval mode is set here).
        raw: normalised float32 (Z, Y, X) volume.
        patch, overlap, batch_size: the sliding window of ``predict``.
        offsets, delta_d, norm, metric: affinities as ``predict`` computes them.
        augment: ``none`` | ``flips`` | ``permutations``: the views.
        on_view: called with (views done, views in all) after each view (progress).

    Returns:
        (boundary moments over ``(1, Z, Y, X)``, nearest-neighbour affinity moments over
        ``(3, Z, Y, X)``, weight 0 where the partner lies outside the volume).
    """
    raw, grid = whole_volume_grid(model, raw, patch, overlap, augment)
    offsets = [tuple(int(d) for d in o) for o in offsets]
    nearest = nearest_neighbours(offsets)
    full = tuple(slice(0, s) for s in raw.shape)
    pairs = volume_pairs(raw.shape, [offsets[i] for i in nearest], full)  # (3, Z, Y, X)
    boundary, affinities = ViewMoments((1, *raw.shape)), ViewMoments((3, *raw.shape))
    transforms = augmentations(augment)
    for done, transform in enumerate(transforms, start=1):
        predictor = OneView(model, grid.patch, offsets, delta_d, norm, transform, metric)
        result = predict_region(predictor, lambda region: raw[region], grid, batch_size=batch_size)
        source = result.get("predicted_affinities", result["affinities"])
        boundary.add(result["boundary"][None])
        affinities.add(source[nearest], pairs)
        del result, source
        if on_view is not None:
            on_view(done, len(transforms))
    return boundary, affinities
