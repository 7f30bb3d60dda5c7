"""Discriminative embedding loss (De Brabandere et al. 2017; Lee et al. 2019, arXiv 1909.09872).

Voxels of one instance are pulled to within ``delta_v`` of their instance mean; means of
different instances are pushed at least ``2 * delta_d`` apart; a small term keeps the means near
the origin. Optional groups (the ground-truth labels of a patch's connected pieces) keep pieces of
one neuron from being pushed apart, as the discriminative loss of Lee et al.'s lab code can
(ZettaAI/DeepEM ``MeanLoss(recompute_ext=True)``). Pure tensor functions: no state, no device
choice of their own.
"""

from __future__ import annotations

import torch

NORMS = ("l1", "l2")
# Squared norms below this are clamped: the gradient of sqrt at 0 is infinite and would turn
# into NaN (inf * 0) when two means coincide or a voxel sits exactly on its mean.
_EPS = 1e-12


def vector_distance(diff: torch.Tensor, norm: str) -> torch.Tensor:
    """L1 or L2 norm over the last axis, with a finite gradient everywhere."""
    if norm == "l1":
        return diff.abs().sum(dim=-1)
    return diff.pow(2).sum(dim=-1).clamp_min(_EPS).sqrt()


def _instance_groups(index: torch.Tensor, groups: torch.Tensor, count: int) -> torch.Tensor:
    """(K,) group of each of the ``count`` instances; every voxel of an instance must share it."""
    low = torch.full((count,), torch.iinfo(groups.dtype).max, dtype=groups.dtype, device=groups.device)
    high = torch.full((count,), torch.iinfo(groups.dtype).min, dtype=groups.dtype, device=groups.device)
    low = low.scatter_reduce(0, index, groups, "amin")
    high = high.scatter_reduce(0, index, groups, "amax")
    if not torch.equal(low, high):
        raise ValueError(f"{int((low != high).sum())} of {count} instances span several groups: "
                         "each instance (connected piece) must lie within one group (label)")
    return low


def _single_terms(
    embedding: torch.Tensor, labels: torch.Tensor, delta_v: float, delta_d: float, norm: str,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intra, inter and reg terms of one batch element.

    Args:
        embedding: (N, E) embeddings of the labelled voxels.
        labels: (N,) instance ids (> 0) of those voxels.
        groups: (N,) group ids of those voxels, or None; instances of one group are not pushed.
    """
    _, index = torch.unique(labels, return_inverse=True)  # (N,) values in [0, K)
    count = int(index.max()) + 1
    sizes = torch.bincount(index, minlength=count).to(embedding.dtype)  # (K,)
    sums = embedding.new_zeros(count, embedding.shape[1]).index_add_(0, index, embedding)  # (K, E)
    means = sums / sizes[:, None]  # (K, E)

    pull = (vector_distance(embedding - means[index], norm) - delta_v).clamp_min(0).pow(2)  # (N,)
    per_instance = embedding.new_zeros(count).index_add_(0, index, pull) / sizes  # (K,)
    intra = per_instance.mean()

    if count > 1:
        pair_distance = vector_distance(means[:, None, :] - means[None, :, :], norm)  # (K, K)
        push = (2 * delta_d - pair_distance).clamp_min(0).pow(2)
        distinct = ~torch.eye(count, dtype=torch.bool, device=embedding.device)
        if groups is None:
            inter = push[distinct].mean()  # mean over the K * (K - 1) ordered pairs
        else:
            group = _instance_groups(index, groups, count)  # (K,)
            # Same denominator as without groups: the pairs of one group only drop out of the sum.
            inter = push[distinct & (group[:, None] != group[None, :])].sum() / (count * (count - 1))
    else:
        inter = means.sum() * 0

    reg = vector_distance(means, norm).mean()
    return intra, inter, reg


def discriminative_loss(
    embedding: torch.Tensor,
    instances: torch.Tensor,
    delta_v: float = 0.5,
    delta_d: float = 1.5,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.001,
    norm: str = "l2",
    groups: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Pull / push / regularisation loss on dense voxel embeddings.

    For each batch element with K labelled instances (means ``mu_k``):

    - ``intra = mean_k mean_{v in k} max(0, ||e_v - mu_k|| - delta_v)^2``
    - ``inter = mean_{a != b} max(0, 2 * delta_d - ||mu_a - mu_b||)^2`` (ordered pairs; 0 if K < 2)
    - ``reg = mean_k ||mu_k||``

    With ``groups``, a pair of instances in one group adds 0 to ``inter`` (still divided by
    ``K * (K - 1)``): the connected pieces of one neuron that meet outside the patch are pulled
    to their own means but not pushed apart, since nothing in the patch says they differ.

    ``loss = alpha * intra + beta * inter + gamma * reg``; every term is averaged over the batch
    elements that have at least one instance.

    Args:
        embedding: (B, E, Z, Y, X) float embeddings.
        instances: (B, Z, Y, X) integer instance ids; 0 marks voxels to ignore.
        delta_v: pull margin.
        delta_d: push margin (means are pushed ``2 * delta_d`` apart).
        alpha: weight of the intra term.
        beta: weight of the inter term.
        gamma: weight of the regularisation term.
        norm: ``"l1"`` or ``"l2"`` distance.
        groups: (B, Z, Y, X) integer group ids (e.g. the ground-truth labels the instances were
            cut from), or None to push every pair of instances apart. Each instance must lie
            within one group.

    Returns:
        Scalars ``{"loss", "intra", "inter", "reg"}``. Without any labelled voxel they are all 0
        but still connected to ``embedding``, so ``backward()`` works.

    Raises:
        ValueError: on mismatched shapes, non-integer instances or groups, an instance spanning
            several groups, or an unknown norm.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got '{norm}'")
    if embedding.ndim != 5 or instances.ndim != 4 or embedding.shape[:1] + embedding.shape[2:] != instances.shape:
        raise ValueError(
            f"embedding {tuple(embedding.shape)} must be (B, E, Z, Y, X) and instances "
            f"{tuple(instances.shape)} (B, Z, Y, X) with the same B, Z, Y, X"
        )
    if instances.is_floating_point() or instances.is_complex():
        raise ValueError(f"instances must hold integer ids, got {instances.dtype}")
    if groups is not None:
        if groups.shape != instances.shape:
            raise ValueError(f"groups {tuple(groups.shape)} and instances {tuple(instances.shape)} differ in shape")
        if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
            raise ValueError(f"groups must hold integer ids, got {groups.dtype}")
    if embedding.dtype in (torch.float16, torch.bfloat16):
        # Means and squared distances over many voxels lose too much in half precision.
        embedding = embedding.float()

    batch, channels = embedding.shape[:2]
    flat = embedding.reshape(batch, channels, -1)  # (B, E, N)
    labels = instances.reshape(batch, -1)  # (B, N)
    group_ids = None if groups is None else groups.reshape(batch, -1).to(labels.device, torch.int64)  # (B, N)
    intras, inters, regs = [], [], []
    for b in range(batch):
        keep = labels[b] > 0
        if not bool(keep.any()):
            continue
        intra, inter, reg = _single_terms(flat[b][:, keep].T, labels[b][keep], delta_v, delta_d, norm,
                                          None if group_ids is None else group_ids[b][keep])
        intras.append(intra)
        inters.append(inter)
        regs.append(reg)

    if not intras:
        zero = (embedding * 0).sum()
        return {"loss": zero, "intra": zero, "inter": zero, "reg": zero}
    intra = torch.stack(intras).mean()
    inter = torch.stack(inters).mean()
    reg = torch.stack(regs).mean()
    return {"loss": alpha * intra + beta * inter + gamma * reg, "intra": intra, "inter": inter, "reg": reg}
