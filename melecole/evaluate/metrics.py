"""Variation of information and adapted Rand error of a segmentation against ground truth.

Everything is computed from one sparse contingency table (voxel counts per pair of segment
and ground-truth labels), counted block by block (:mod:`melecole.evaluate.pair_counts`):
the cost is proportional to the number of voxels, never to the size of the largest label id
(uint64 ids from agglomeration or Mutex Watershed can be anywhere up to 2**64 - 1), and
volumes on disk are scored in memory proportional to a block, never to the volume
(:func:`contingency_tables`, :func:`evaluate_volumes`).

Conventions (the metrics contract of the project):

* ``vi_split`` = H(seg | gt) and ``vi_merge`` = H(gt | seg), in bits.
* ``arand`` is the adapted Rand error of the SNEMI3D challenge, equal to
  ``skimage.metrics.adapted_rand_error(gt, seg)[0]``.
* Voxels whose ground truth is in ``ignore_gt`` do not count. Segmentation label 0 is an
  ordinary label: a segmenter that leaves voxels unlabelled is charged for merging them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sparse

from melecole.errors import MelecoleError
from melecole.evaluate.streaming import BLOCK_VOXELS, count_pairs

__all__ = [
    "adapted_rand_error",
    "contingency",
    "contingency_tables",
    "evaluate_pooled",
    "evaluate_segmentation",
    "evaluate_volumes",
    "scores_of_table",
    "variation_of_information",
]


def contingency(
    seg: np.ndarray, gt: np.ndarray, ignore_gt: Sequence[int] = (0,), block_voxels: int = BLOCK_VOXELS
) -> sparse.csr_matrix:
    """Count the voxels shared by every segment and ground-truth object.

    Args:
        seg: Segmentation, integer labels, any shape, e.g. ``(Z, Y, X)``.
        gt: Ground truth, integer labels, same shape as ``seg``.
        ignore_gt: Ground-truth labels whose voxels are left out of the table.
        block_voxels: Voxels counted at a time (the table does not depend on it).

    Returns:
        An int64 ``csr_matrix`` of shape ``(n_seg, n_gt)``: entry ``[i, j]`` is the number of
        counted voxels with the ``i``-th smallest segmentation label and the ``j``-th smallest
        ground-truth label, among the labels present in counted voxels. Zero entries are not
        stored.

    Raises:
        MelecoleError: If the shapes differ, a dtype is not integer, or every voxel of ``gt``
            is ignored.
    """
    return contingency_tables([np.asarray(seg)], np.asarray(gt), ignore_gt, block_voxels)[0]


def contingency_tables(
    segs: Sequence, gt, ignore_gt: Sequence[int] = (0,), block_voxels: int = BLOCK_VOXELS
) -> list[sparse.csr_matrix]:
    """The :func:`contingency` table of each segmentation, reading the volumes block by block.

    Memory is proportional to one block of every volume plus the distinct label pairs, never
    to the volume: a volume may be an array or a lazily readable volume (``shape``,
    ``dtype``, ``read(region)``, such as :func:`melecole.io.open_volume` returns), and
    blocks follow its storage chunks. Each table is exactly the one of the whole arrays.

    Args:
        segs: Segmentations, each of ``gt``'s shape (z, y, x for readable volumes).
        gt: Ground truth, read once for all segmentations.
        ignore_gt: Ground-truth labels whose voxels are left out of the tables.
        block_voxels: Voxels per block (a target; a block holds at least a storage chunk).

    Raises:
        MelecoleError: If a shape differs, a dtype is not integer, a read fails, or every
            voxel of ``gt`` is ignored.
    """
    counts = count_pairs(segs, gt, ignore_gt, block_voxels)
    if counts and counts[0].voxels == 0:
        raise MelecoleError(
            f"ground truth {tuple(gt.shape)} has no voxel outside the ignored labels "
            f"{tuple(int(label) for label in ignore_gt)}; there is nothing to evaluate"
        )
    return [count.table() for count in counts]


def variation_of_information(
    seg: np.ndarray, gt: np.ndarray, ignore_gt: Sequence[int] = (0,)
) -> tuple[float, float]:
    """Split and merge parts of the variation of information, in bits.

    Args:
        seg: Segmentation, integer labels, e.g. ``(Z, Y, X)``.
        gt: Ground truth, integer labels, same shape as ``seg``.
        ignore_gt: Ground-truth labels whose voxels do not count.

    Returns:
        ``(vi_split, vi_merge)`` = ``(H(seg | gt), H(gt | seg))``. A pure over-segmentation
        has ``vi_merge == 0``; a pure under-segmentation has ``vi_split == 0``.

    Raises:
        MelecoleError: If the shapes differ, a dtype is not integer, or every voxel of ``gt``
            is ignored.
    """
    return _vi_from_table(contingency(seg, gt, ignore_gt))


def adapted_rand_error(
    seg: np.ndarray, gt: np.ndarray, ignore_gt: Sequence[int] = (0,)
) -> float:
    """Adapted Rand error of the SNEMI3D challenge (Arganda-Carreras et al. 2015).

    One minus the F-score of pairwise precision and recall: over all unordered pairs of
    distinct counted voxels, how well "same segment" agrees with "same ground-truth object".

    Args:
        seg: Segmentation, integer labels, e.g. ``(Z, Y, X)``.
        gt: Ground truth, integer labels, same shape as ``seg``.
        ignore_gt: Ground-truth labels whose voxels do not count.

    Returns:
        The error in ``[0, 1]``; 0 for a segmentation equal to the ground truth up to
        relabelling.

    Raises:
        MelecoleError: If the shapes differ, a dtype is not integer, or every voxel of ``gt``
            is ignored.
    """
    return _arand_from_table(contingency(seg, gt, ignore_gt))


def evaluate_segmentation(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """All evaluation metrics of a segmentation, ground-truth label 0 ignored.

    Args:
        seg: Segmentation, integer labels, e.g. ``(Z, Y, X)``.
        gt: Ground truth, integer labels, same shape as ``seg``; 0 marks unlabelled voxels.

    Returns:
        ``{"vi_split": ..., "vi_merge": ..., "arand": ...}`` as plain Python floats.

    Raises:
        MelecoleError: If the shapes differ, a dtype is not integer, or ``gt`` is all 0.
    """
    return _scores(contingency(seg, gt, ignore_gt=(0,)))


def evaluate_volumes(segs: Sequence, gt, block_voxels: int = BLOCK_VOXELS) -> list[dict[str, float]]:
    """:func:`evaluate_segmentation` of each segmentation, in bounded memory.

    Args:
        segs: Segmentations, arrays or lazily readable volumes (see :func:`contingency_tables`).
        gt: Ground truth of the same shape, read once; 0 marks unlabelled voxels.
        block_voxels: Voxels per block.

    Returns:
        One ``{"vi_split": ..., "vi_merge": ..., "arand": ...}`` per segmentation.

    Raises:
        MelecoleError: If a shape differs, a dtype is not integer, a read fails, or ``gt`` is all 0.
    """
    return [_scores(table) for table in contingency_tables(segs, gt, (0,), block_voxels)]


def evaluate_pooled(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The metrics of several volumes scored as one validation set.

    The volumes are disjoint, so no segment and no ground-truth object spans two of them: the
    pooled contingency table is block-diagonal, one block per volume, and the result equals
    :func:`evaluate_segmentation` of the volumes laid side by side with their labels made
    distinct. Each volume weighs by its number of labelled voxels.

    Args:
        pairs: ``(seg, gt)`` per volume, each pair of one shape, as in :func:`evaluate_segmentation`.

    Raises:
        MelecoleError: If ``pairs`` is empty, a pair's shapes differ, a dtype is not integer,
            or a ground truth is all 0.
    """
    if not pairs:
        raise MelecoleError("no volumes to evaluate")
    return _scores(sparse.block_diag([contingency(seg, gt, ignore_gt=(0,)) for seg, gt in pairs], format="csr"))


def scores_of_table(table: sparse.csr_matrix) -> dict[str, float]:
    """VI split, VI merge and adapted Rand error of a :func:`contingency` table."""
    return _scores(table)


def _scores(table: sparse.csr_matrix) -> dict[str, float]:
    vi_split, vi_merge = _vi_from_table(table)
    return {"vi_split": vi_split, "vi_merge": vi_merge, "arand": _arand_from_table(table)}


def _vi_from_table(table: sparse.csr_matrix) -> tuple[float, float]:
    counts = table.data.astype(np.float64)  # (nnz,) voxels per (seg, gt) pair
    seg_ids = np.repeat(np.arange(table.shape[0]), np.diff(table.indptr))  # (nnz,)
    gt_ids = table.indices  # (nnz,)
    seg_sizes = np.bincount(seg_ids, weights=counts, minlength=table.shape[0])  # (n_seg,)
    gt_sizes = np.bincount(gt_ids, weights=counts, minlength=table.shape[1])  # (n_gt,)
    total = counts.sum()
    # H(seg | gt) = -sum_ij p_ij log2(p_ij / p_j), written per pair rather than as
    # H(seg, gt) - H(gt) to avoid cancellation between two large entropies. Every term is
    # >= 0 and log2(1) == 0 exactly, so a perfect score is exactly 0; subtracting from 0.0
    # (not negating) keeps it +0.0, which JSON would otherwise print as -0.0.
    vi_split = 0.0 - np.sum(counts * np.log2(counts / gt_sizes[gt_ids])) / total
    vi_merge = 0.0 - np.sum(counts * np.log2(counts / seg_sizes[seg_ids])) / total
    return float(vi_split), float(vi_merge)


def _arand_from_table(table: sparse.csr_matrix) -> float:
    counts = table.data.astype(np.float64)  # (nnz,)
    seg_sizes = np.asarray(table.sum(axis=1), dtype=np.float64).ravel()  # (n_seg,)
    gt_sizes = np.asarray(table.sum(axis=0), dtype=np.float64).ravel()  # (n_gt,)
    total = counts.sum()
    # Each sum counts ordered pairs of distinct voxels: n * n - n per group.
    pairs_both = counts @ counts - total
    pairs_seg = seg_sizes @ seg_sizes - total
    pairs_gt = gt_sizes @ gt_sizes - total
    denominator = 0.5 * (pairs_seg + pairs_gt)
    if denominator == 0.0:
        # Every segment and every object is a single voxel: the partitions are identical.
        return 0.0
    return float(1.0 - pairs_both / denominator)
