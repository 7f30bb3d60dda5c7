"""Voxel counts of (segment, ground-truth object) label pairs, accumulated block by block.

The contingency table of a segmentation against its ground truth is a sum over voxels, so
any partition of the volume into blocks gives the same table, whatever the voxel order:
each block adds its counts and the sums are exact integers. Memory stays proportional to one
block plus the number of distinct pairs, never to the volume.

Per block, the two label lines (C order) are run-length encoded together first: segment and
object change only at boundaries, so one (segment, object, length) run stands for the tens
of voxels between two boundaries of a typical segmentation (for one voxel in the worst case:
the result is the same, only slower). Labels are compared as values, never used as indices,
so any integer dtype works, with ids anywhere up to 2**64 - 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import fastremap
import numpy as np
import scipy.sparse as sparse

__all__ = ["PairCounts"]

# Pending per-block pairs are merged once they outnumber this or the pairs merged so far,
# whichever is larger: memory stays within a small multiple of the distinct pairs, and each
# pair is re-sorted O(log(blocks)) times at most.
MERGE_PAIRS = 1 << 20
# Dense ids by hashing (fastremap) beat a sort (np.unique) from arrays of this many labels on,
# as long as few of them are distinct; with many distinct labels its Python dict costs more.
HASH_MIN_LABELS = 1 << 16


class PairCounts:
    """Accumulates the voxel count of every (segment label, ground-truth label) pair.

    Args:
        ignore_gt: Ground-truth labels whose voxels are not counted.

    Example:
        ``counts = PairCounts(); counts.add(seg[:8], gt[:8]); counts.add(seg[8:], gt[8:])``
        gives the same :meth:`pairs` and :meth:`table` as ``counts.add(seg, gt)`` alone.
    """

    def __init__(self, ignore_gt: Sequence[int] = (0,)):
        self.ignore_gt = tuple(int(label) for label in ignore_gt)
        self._dtypes: tuple[np.dtype, np.dtype] | None = None
        self._merged: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_pairs = 0

    def add(self, seg: np.ndarray, gt: np.ndarray) -> None:
        """Counts the voxels of one block; ``seg`` and ``gt`` are integer labels of one shape.

        Raises:
            ValueError: If the shapes differ, or the dtypes differ from earlier blocks' (the
                blocks of one pair of volumes share their dtypes).
        """
        seg, gt = np.asarray(seg), np.asarray(gt)
        if seg.shape != gt.shape:
            raise ValueError(f"segmentation block {seg.shape} and ground-truth block {gt.shape} differ")
        if self._dtypes is None:
            self._dtypes = (seg.dtype, gt.dtype)
        elif (seg.dtype, gt.dtype) != self._dtypes:
            raise ValueError(f"blocks of dtypes {seg.dtype}, {gt.dtype} after blocks of {self._dtypes}")
        if seg.size == 0:
            return
        seg_runs, gt_runs, lengths = _runs(seg.reshape(-1), gt.reshape(-1))  # (R,) each
        ignored = _ignored(gt_runs, self.ignore_gt)
        if ignored is not None:
            kept = ~ignored
            seg_runs, gt_runs, lengths = seg_runs[kept], gt_runs[kept], lengths[kept]
        if lengths.size == 0:
            return
        self._pending.append(_reduce(seg_runs, gt_runs, lengths))
        self._pending_pairs += self._pending[-1][2].size
        if self._pending_pairs > max(MERGE_PAIRS, 0 if self._merged is None else self._merged[2].size):
            self._merge()

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct counted pairs, sorted by segment label then ground-truth label.

        Returns:
            ``(seg_labels, gt_labels, counts)``, each ``(P,)``: labels in the blocks' dtypes,
            counts int64 (all positive).
        """
        self._merge()
        if self._merged is None:
            seg_dtype, gt_dtype = self._dtypes or (np.dtype(np.int64), np.dtype(np.int64))
            return np.empty(0, seg_dtype), np.empty(0, gt_dtype), np.empty(0, np.int64)
        return self._merged

    @property
    def voxels(self) -> int:
        """The number of counted voxels so far."""
        return int(self.pairs()[2].sum())

    def table(self) -> sparse.csr_matrix:
        """The contingency table: an int64 ``csr_matrix`` of shape ``(n_seg, n_gt)``.

        Entry ``[i, j]`` is the number of counted voxels with the ``i``-th smallest segment
        label and the ``j``-th smallest ground-truth label, among the labels of counted
        voxels. Zero entries are not stored; indices are sorted (canonical format).
        """
        seg, gt, counts = self.pairs()
        row_starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]]) if seg.size else np.empty(0, np.int64)
        indptr = np.append(row_starts, seg.size)  # (n_seg + 1,)
        gt_labels, columns = np.unique(gt, return_inverse=True)  # (n_gt,), (P,)
        # Pairs are sorted by (seg, gt) and columns rank gt labels: rows come out canonical.
        return sparse.csr_matrix((counts, columns, indptr), shape=(row_starts.size, gt_labels.size))

    def _merge(self) -> None:
        parts = self._pending + ([self._merged] if self._merged is not None else [])
        self._pending, self._pending_pairs = [], 0
        if len(parts) == 1:
            self._merged = parts[0]  # one block's pairs are already distinct and sorted
        elif parts:
            self._merged = _reduce(*(np.concatenate(column) for column in zip(*parts)))


def _runs(seg: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal (seg, gt) along label lines (N,): their labels and lengths, each (R,)."""
    size = seg.size
    change = np.empty(size, dtype=bool)  # (N,) True where a run starts
    change[0] = True
    np.not_equal(seg[1:], seg[:-1], out=change[1:])
    change[1:] |= gt[1:] != gt[:-1]
    starts = np.flatnonzero(change)  # (R,)
    return seg[starts], gt[starts], np.diff(starts, append=size)


def _ignored(labels: np.ndarray, ignore: tuple[int, ...]) -> np.ndarray | None:
    """Mask of ``labels`` (R,) in ``ignore``, or None when none can be (exact for uint64 ids)."""
    info = np.iinfo(labels.dtype)
    # Compared in the labels' own dtype: np.isin of uint64 against int64 goes through
    # float64 and would confuse ids above 2**53.
    ignore = [label for label in ignore if info.min <= label <= info.max]
    if not ignore:
        return None
    if len(ignore) == 1:
        return labels == labels.dtype.type(ignore[0])
    return np.isin(labels, np.array(ignore, dtype=labels.dtype))


def _reduce(seg: np.ndarray, gt: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums ``counts`` (R,) per distinct (seg, gt) pair; returns the pairs sorted, each (P,)."""
    seg_labels, seg_ids = _dense(seg)  # (S,), (R,)
    gt_labels, gt_ids = _dense(gt)  # (G,), (R,)
    n_gt = gt_labels.size
    keys = seg_ids * n_gt + gt_ids  # (R,) rank in (seg, gt) order
    n_keys = seg_labels.size * n_gt
    if n_keys <= 4 * keys.size + 4096:
        # Few possible pairs: one bincount beats a sort. Float sums of integer counts are
        # exact below 2**53 voxels.
        sums = np.bincount(keys, weights=counts, minlength=n_keys)  # (S * G,)
        keys = np.flatnonzero(sums)  # (P,)
        sums = sums[keys].astype(np.int64)
    else:
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])  # (P,)
        sums = np.add.reduceat(counts[order].astype(np.int64, copy=False), first)
        keys = keys[first]
    return seg_labels[keys // n_gt], gt_labels[keys % n_gt], sums


def _dense(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct labels (L,), ascending, and the rank of each of ``labels`` (R,) among them, int64."""
    if labels.dtype.itemsize <= 2:
        # A lookup table over the whole dtype range (at most 65536 entries); fastremap's ids
        # would overflow 8- and 16-bit dtypes holding more labels than the dtype's positives.
        low = int(np.iinfo(labels.dtype).min)
        offsets = labels.astype(np.int64) - low  # (R,)
        present = np.bincount(offsets, minlength=1 << (8 * labels.dtype.itemsize)) > 0
        rank = np.cumsum(present) - 1
        return (np.flatnonzero(present) + low).astype(labels.dtype), rank[offsets]
    if labels.size >= HASH_MIN_LABELS:
        sample = labels[:: labels.size // 4096]
        if 4 * np.unique(sample).size < sample.size:
            # fastremap numbers labels by first appearance; ranking its few distinct labels
            # makes the ids follow label order.
            ids, remap = fastremap.renumber(labels, start=0, preserve_zero=False)  # (R,)
            n_labels = len(remap)
            values = np.fromiter(remap.keys(), dtype=labels.dtype, count=n_labels)  # (L,)
            first_seen = np.fromiter(remap.values(), dtype=np.int64, count=n_labels)  # (L,)
            order = np.argsort(values)
            rank = np.empty(n_labels, dtype=np.int64)
            rank[first_seen[order]] = np.arange(n_labels)
            return values[order], rank[ids]
    distinct, ranks = np.unique(labels, return_inverse=True)
    return distinct, ranks.astype(np.int64, copy=False)
