"""A loss on the embedding's own affinities: the metric graph the Mutex Watershed reads.

The discriminative loss shapes instance means and leaves every voxel free within ``delta_v`` of
its mean, so two neighbouring voxels of one neuron may lie up to ``2 * delta_v`` apart at zero
loss, where the distance affinity is already below one half. Training the affinities themselves
(a class-balanced BCE at the segmentation's offsets, as Luther & Seung 2019, arXiv 1902.00100,
train a metric graph) asks directly for what inference uses. Pure tensor functions; the
inference-time :func:`melecole.segment.affinities.embedding_affinities` is their reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from melecole.losses.boundary import boundary_bce
from melecole.losses.discriminative import NORMS, vector_distance
from melecole.segment.affinities import shifted_pair

# The BCE sees the affinity through its logit; probabilities are kept this far from 0 and 1.
_PROBABILITY_EPS = 1e-6


def distance_affinities(
    embedding: torch.Tensor, offsets: Sequence[Sequence[int]], delta_d: float, norm: str = "l2",
) -> torch.Tensor:
    """Differentiable ``a = (max(0, 2 delta_d - ||e_u - e_v||) / (2 delta_d))**2`` per offset.

    Args:
        embedding: (B, E, Z, Y, X) voxel embeddings.
        offsets: C offsets ``(dz, dy, dx)``; channel ``c`` compares ``v`` with ``v + offsets[c]``.
        delta_d: the loss's push margin; affinities reach 0 at distance ``2 * delta_d``.
        norm: ``"l1"`` or ``"l2"``.

    Returns:
        (B, C, Z, Y, X) affinities in [0, 1]; 0 where ``v + offset`` leaves the patch.
    """
    if embedding.ndim != 5:
        raise ValueError(f"embedding must be (B, E, Z, Y, X), got shape {tuple(embedding.shape)}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got '{norm}'")
    if delta_d <= 0:
        raise ValueError(f"delta_d must be positive, got {delta_d}")
    margin = 2.0 * delta_d
    shape = tuple(embedding.shape[2:])
    if any(len(offset) != 3 for offset in offsets):
        raise ValueError(f"offsets must each be (dz, dy, dx), got {list(offsets)}")
    # One output written per channel: no per-offset zero tensors to stack afterwards.
    out = embedding.new_zeros((embedding.shape[0], len(offsets)) + shape)
    every = (slice(None), slice(None))
    for channel, offset in enumerate(offsets):
        pair = shifted_pair(shape, offset)
        if pair is None:
            continue
        sources, partners = pair
        distance = vector_distance((embedding[every + sources] - embedding[every + partners]).movedim(1, -1), norm)
        out[(slice(None), channel) + sources] = ((margin - distance).clamp_min(0) / margin).square()
    return out


def embedding_affinity_bce(
    embedding: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
    offsets: Sequence[Sequence[int]], delta_d: float, norm: str = "l2",
) -> torch.Tensor:
    """Class-balanced BCE of the embedding's distance affinities against affinity targets.

    Args:
        embedding: (B, E, Z, Y, X) voxel embeddings.
        target: (B, C, Z, Y, X) affinity targets (1 = same object), one channel per offset.
        mask: (B, C, Z, Y, X) 0/1 weights (0 where the partner voxel lies outside the patch).
        offsets, delta_d, norm: as for :func:`distance_affinities`.

    Returns:
        A scalar loss.
    """
    if target.shape[1] != len(offsets):
        raise ValueError(f"target has {target.shape[1]} channels for {len(offsets)} offsets")
    affinities = distance_affinities(embedding, offsets, delta_d, norm)
    logits = torch.logit(affinities, eps=_PROBABILITY_EPS)
    return boundary_bce(logits, target, mask)
