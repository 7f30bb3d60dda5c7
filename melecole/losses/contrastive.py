"""Voxel-level InfoNCE (MoCo, He et al. 2020) and an embedding-collapse indicator: pure functions.

Queries come from the online network on one view, keys from the momentum network on the other
view at the corresponding voxels. For query ``i`` the positive is key ``i`` (the same tissue
voxel seen twice); the negatives are the batch's keys of *other* neurons and the queue's keys of
other neurons. Keys of the same neuron at other voxels are neither: pushing them away would fight
the embedding loss, which pulls a neuron's voxels together. A neuron is known across samples and
batches by its identity (training volume index, label id): patches of a small volume overlap
constantly, so the queue often holds the query's own neuron, even its very voxel. An identity
with a negative volume (unknown) or label 0 (unlabelled) matches nothing, so such keys stay
negatives, as keys of other ``labels`` do in the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def same_identity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) bool: identity ``a[i]`` is known and equals ``b[j]``.

    Args:
        a: (N, 2) int (volume index, label id); known when volume >= 0 and label != 0.
        b: (M, 2) int, likewise.
    """
    known = (a[:, 0] >= 0) & (a[:, 1] != 0)
    return known[:, None] & (a[:, None, :] == b[None, :, :]).all(dim=-1)


def info_nce(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, queue: torch.Tensor | None,
             temperature: float, valid: torch.Tensor | None = None, identities: torch.Tensor | None = None,
             queue_identities: torch.Tensor | None = None) -> torch.Tensor:
    """Mean InfoNCE loss of the valid queries.

    ``loss_i = -log(exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_{j: l_j != l_i, n_j != n_i}
    exp(q_i.k_j / t) + sum_{m: v_m != n_i} exp(q_i.u_m / t)))`` with ``u`` the queue, ``n`` the
    pairs' identities and ``v`` the queue's (identity conditions apply where both are given and
    ``n_i`` is known; see :func:`same_identity`).

    Args:
        queries: (N, D) query features, L2-normalised.
        keys: (N, D) key features of the same voxels in the other view, L2-normalised; treated
            as constants (no gradient).
        labels: (N,) neuron id of each pair, unique across the batch (one neuron = one id).
        queue: (Q, D) negatives from earlier batches, or None.
        temperature: softmax temperature t > 0.
        valid: (N,) bool; pairs to score (others are neither scored nor used as negatives).
        identities: (N, 2) int64 (volume index, label id) of each pair, or None.
        queue_identities: (Q, 2) int64 identities of the queue's keys, or None.

    Returns:
        A scalar; 0 when no pair is valid.

    Raises:
        ValueError: on mismatched shapes or a non-positive temperature.
    """
    if queries.ndim != 2 or queries.shape != keys.shape:
        raise ValueError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must both be (N, D)")
    if labels.shape != queries.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} must be (N,) for queries {tuple(queries.shape)}")
    if queue is not None and (queue.ndim != 2 or queue.shape[1] != queries.shape[1]):
        raise ValueError(f"queue {tuple(queue.shape)} must be (Q, {queries.shape[1]})")
    if identities is not None and identities.shape != (queries.shape[0], 2):
        raise ValueError(f"identities {tuple(identities.shape)} must be (N, 2) for queries {tuple(queries.shape)}")
    if queue_identities is not None and (queue is None or queue_identities.shape != (queue.shape[0], 2)):
        raise ValueError(f"queue_identities {tuple(queue_identities.shape)} must be (Q, 2) for queue "
                         f"{None if queue is None else tuple(queue.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if valid is not None:
        queries, keys, labels = queries[valid], keys[valid], labels[valid]
        identities = None if identities is None else identities[valid]
    if queries.shape[0] == 0:
        return queries.sum() * 0.0
    keys = keys.detach()
    batch_logits = queries @ keys.T / temperature  # (N, N); the diagonal holds the positives
    same_neuron = labels[:, None] == labels[None, :]
    if identities is not None:
        same_neuron |= same_identity(identities, identities)
    same_neuron.fill_diagonal_(False)
    batch_logits = batch_logits.masked_fill(same_neuron, float("-inf"))
    logits = batch_logits
    if queue is not None and queue.shape[0] > 0:
        queue_logits = queries @ queue.detach().T / temperature  # (N, Q)
        if identities is not None and queue_identities is not None:
            queue_logits = queue_logits.masked_fill(same_identity(identities, queue_identities), float("-inf"))
        logits = torch.cat([batch_logits, queue_logits], dim=1)  # (N, N + Q)
    targets = torch.arange(queries.shape[0], device=queries.device)
    return F.cross_entropy(logits, targets)


def feature_spread(features: torch.Tensor) -> torch.Tensor:
    """Embedding-collapse indicator: mean per-dimension std of L2-normalised features * sqrt(D).

    Features spread evenly over the unit sphere have a per-dimension std near 1 / sqrt(D), so
    the indicator is near 1; collapsed features (all the same vector) give 0.

    Args:
        features: (N, D) features, N >= 2 (normalised here).

    Returns:
        A detached scalar.
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features {tuple(features.shape)} must be (N, D) with N >= 2")
    normalised = F.normalize(features.detach().float(), dim=1)
    return normalised.std(dim=0, unbiased=False).mean() * math.sqrt(features.shape[1])
