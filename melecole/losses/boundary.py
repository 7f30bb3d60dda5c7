"""Class-balanced binary cross-entropy for the boundary head (a pure tensor function).

The boundary *targets* are computed in :mod:`melecole.data.targets` (numpy, before batching).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def boundary_bce(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy with logits, with positives weighted by inverse frequency.

    Boundary voxels are a minority (often 10-30 %), so an unweighted BCE is satisfied by
    predicting "interior" nearly everywhere. Here each positive voxel is weighted by
    ``n_neg / n_pos`` (negatives by 1) and the sum is divided by the total weight. Both classes
    then carry the same total weight, and the result equals the mean of the positives' average
    loss and the negatives' average loss. Class counts are taken over the whole batch and
    include ``weight``; soft targets count fractionally. If only one class is present, the
    loss is the plain (``weight``-weighted) mean BCE.

    Args:
        logits: (B, 1, Z, Y, X) boundary logits.
        target: (B, 1, Z, Y, X) targets in [0, 1], 1 = boundary.
        weight: optional (B, 1, Z, Y, X) non-negative per-voxel weights, e.g. a 0/1 mask of
            voxels to train on.

    Returns:
        A scalar loss; 0 (connected to ``logits``) if every weight is 0.

    Raises:
        ValueError: if the shapes differ.
    """
    if logits.shape != target.shape or (weight is not None and weight.shape != logits.shape):
        extra = "" if weight is None else f" and weight {tuple(weight.shape)}"
        raise ValueError(f"logits {tuple(logits.shape)}, target {tuple(target.shape)}{extra} must have one shape")
    target = target.to(logits.dtype)
    voxel_weight = torch.ones_like(target) if weight is None else weight.to(logits.dtype)
    with torch.no_grad():
        positives = (voxel_weight * target).sum()
        negatives = (voxel_weight * (1 - target)).sum()
        if positives > 0 and negatives > 0:
            pos_weight = negatives / positives
        else:
            pos_weight = torch.ones((), dtype=logits.dtype, device=logits.device)
        total = (voxel_weight * (pos_weight * target + (1 - target))).sum()
    if total <= 0:
        return (logits * 0).sum()
    # pos_weight scales only the target * log(sigmoid) part, so soft targets split their weight.
    per_voxel = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    return (voxel_weight * per_voxel).sum() / total
