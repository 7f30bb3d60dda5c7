"""Contrastive training samples: two views of one region and voxel pairs drawn from their overlap.

:class:`ViewSampler` reads a region large enough for two shifted patches, applies the geometric
augmentation once to the region (both views share it), then cuts two views with
:func:`~melecole.data.views.two_views`, each with its own flips and intensity augmentation.
:func:`sample_pairs` picks labelled voxels of the overlap: the same tissue voxel in both views
is a positive pair for the contrastive loss. The pairs remember the volume they came from: a
label id names one neuron within one volume, so (volume, label) is a voxel's neuron identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from melecole.data.sampling import PatchSampler
from melecole.errors import MelecoleError
from melecole.data.views import ViewPair, two_views, views_read_shape


@dataclass(frozen=True)
class VoxelPairs:
    """N voxel pairs of one :class:`ViewPair`.

    Attributes:
        index_a: (N,) int64 flat indices into view a.
        index_b: (N,) int64 flat indices of the same voxels in view b.
        labels: (N,) the voxels' label ids (the region's labels).
        valid: (N,) bool; False marks padding when the overlap has no labelled voxel.
        volume: index of the training volume the region was read from; -1 = unknown.
    """

    index_a: np.ndarray
    index_b: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    volume: int = -1


def sample_pairs(pair: ViewPair, count: int, rng: np.random.Generator, volume: int = -1) -> VoxelPairs:
    """Draws ``count`` labelled voxels of the views' overlap (with replacement when it has fewer).

    ``volume`` (the index of the region's training volume, -1 = unknown) is passed on to the pairs.

    Raises:
        ValueError: when ``count`` is below 1.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    patch = pair.raw[0].shape
    shared_labels = pair.shared(0, pair.labels[0])  # (z', y', x') in shared order
    candidates = np.flatnonzero(shared_labels)
    if candidates.size == 0:
        zeros = np.zeros(count, dtype=np.int64)
        return VoxelPairs(zeros, zeros.copy(), np.zeros(count, dtype=pair.labels[0].dtype), np.zeros(count, bool),
                          volume)
    chosen = rng.choice(candidates, size=count, replace=candidates.size < count)
    position = np.unravel_index(chosen, shared_labels.shape)
    flat = []
    for view in range(2):
        coords = tuple(axis_index[p] for axis_index, p in zip(pair.index[view], position))
        flat.append(np.ravel_multi_index(coords, patch).astype(np.int64))
    return VoxelPairs(flat[0], flat[1], shared_labels.reshape(-1)[chosen], np.ones(count, bool), volume)


class ViewSampler:
    """Two augmented views of random regions, with voxel pairs, from one or many labelled volumes.

    Args:
        volumes: (raw, labels) pairs; raw already normalised.
        patch: (Z, Y, X) shape of each view.
        max_offset: largest shift between the two views per axis (below the patch).
        pairs: voxel pairs drawn per sample.
        rng: the only source of randomness.
        geometry: ``geometry(raw, labels, rng, shape) -> (raw, labels)``, the shared geometric
            augmentation from a read region to ``shape``; None reads the region as it is.
        read: region to read for ``geometry``; defaults to the views' region.
        intensity: ``intensity(raw, rng) -> raw`` applied to each view separately.
        min_labelled: labelled fraction a region needs (see :class:`PatchSampler`).
    """

    def __init__(self, volumes: list[tuple[np.ndarray, np.ndarray]], patch: Sequence[int], max_offset: Sequence[int],
                 pairs: int, rng: np.random.Generator,
                 geometry: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
                 read: Sequence[int] | None = None,
                 intensity: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 min_labelled: float = 0.5):
        self.patch = tuple(int(p) for p in patch)
        self.max_offset = tuple(int(m) for m in max_offset)
        self.region = views_read_shape(self.patch, self.max_offset)
        self.pairs = int(pairs)
        self.rng = rng
        self.intensity = intensity
        if not any(all(r <= s for r, s in zip(self.region, raw.shape)) for raw, _ in volumes):
            shapes = ", ".join(str(raw.shape) for raw, _ in volumes)
            raise MelecoleError(f"two views of patch {self.patch} shifted by up to {self.max_offset} need a region "
                                f"{self.region}, larger than every training volume ({shapes}): lower "
                                "train.contrastive.max_offset or train.patch")
        augment = None
        if geometry is not None:
            def augment(raw, labels, generator):
                return geometry(raw, labels, generator, self.region)
        self.regions = PatchSampler(volumes, self.region, rng, permute="none", flip=False, min_labelled=min_labelled,
                                    augment=augment, read=tuple(read) if geometry is not None and read else None)

    def sample(self) -> tuple[ViewPair, VoxelPairs]:
        """One pair of views and its voxel pairs (with the index of their volume in ``volumes``)."""
        volume, raw, labels = self.regions.sample_indexed()
        pair = two_views(raw, labels, self.rng, self.patch, self.max_offset, flip=True, intensity=self.intensity)
        return pair, sample_pairs(pair, self.pairs, self.rng, volume)
