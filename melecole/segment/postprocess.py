"""Clean-up of a segmentation: merging small segments, consecutive relabelling.

Pure functions: inputs are never modified, results are fresh uint64 arrays. Label 0 is
background: it is kept as it is, never absorbs a segment and is never merged into one.
"""

from __future__ import annotations

from collections.abc import Sequence

import fastremap
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def relabel_consecutive(segmentation: np.ndarray) -> np.ndarray:
    """Renumbers labels to 1..N in order of first appearance (C order), keeping 0 as 0.

    Args:
        segmentation: integer label volume of any shape. Not modified.

    Returns:
        uint64 array of the same shape.
    """
    segmentation = np.asarray(segmentation)
    if segmentation.size == 0:
        return segmentation.astype(np.uint64)
    relabelled, _ = fastremap.renumber(segmentation, preserve_zero=True, in_place=False)
    return np.asarray(relabelled, dtype=np.uint64)


def _face_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels on both sides of every face between two different foreground segments."""
    firsts, seconds = [], []
    for axis in range(labels.ndim):
        lower = labels[tuple(slice(0, -1) if a == axis else slice(None) for a in range(labels.ndim))]
        upper = labels[tuple(slice(1, None) if a == axis else slice(None) for a in range(labels.ndim))]
        boundary = (lower != upper) & (lower != 0) & (upper != 0)
        firsts.append(lower[boundary])
        seconds.append(upper[boundary])
    return np.concatenate(firsts), np.concatenate(seconds)


def _affinity_pairs(
    labels: np.ndarray, affinities: np.ndarray, offsets: Sequence[Sequence[int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and nearest-neighbour affinity across every boundary between foreground segments."""
    affinities = np.asarray(affinities)
    offsets = [tuple(int(d) for d in o) for o in offsets]
    if affinities.ndim != labels.ndim + 1 or affinities.shape[1:] != labels.shape:
        raise ValueError(f"affinities {affinities.shape} do not match segmentation {labels.shape}")
    if len(offsets) != affinities.shape[0]:
        raise ValueError(f"{len(offsets)} offsets for affinities {affinities.shape}")
    nearest = [c for c, o in enumerate(offsets) if sum(abs(d) for d in o) == 1]
    if not nearest:
        raise ValueError(f"no nearest-neighbour offset (one unit step) among {offsets}")
    firsts, seconds, values = [], [], []
    for channel in nearest:
        sources, partners = [], []
        for size, step in zip(labels.shape, offsets[channel]):
            sources.append(slice(max(0, -step), size - max(0, step)))
            partners.append(slice(max(0, step), size - max(0, -step)))
        u, v = labels[tuple(sources)], labels[tuple(partners)]
        boundary = (u != v) & (u != 0) & (v != 0)
        firsts.append(u[boundary])
        seconds.append(v[boundary])
        values.append(affinities[channel][tuple(sources)][boundary].astype(np.float64))
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(values)


def _aggregate(
    lo: np.ndarray, hi: np.ndarray, total: np.ndarray, count: np.ndarray, n_nodes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sums ``total`` and ``count`` per unordered pair of node indices, dropping self-pairs."""
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    keep = lo != hi
    lo, hi, total, count = lo[keep], hi[keep], total[keep], count[keep]
    keys = lo.astype(np.uint64) * np.uint64(n_nodes) + hi.astype(np.uint64)
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return (
        lo[first],
        hi[first],
        np.bincount(inverse, weights=total, minlength=len(unique)),
        np.bincount(inverse, weights=count, minlength=len(unique)),
    )


def _indices(ids: np.ndarray, query: np.ndarray, what: str) -> np.ndarray:
    """Positions of ``query`` in the sorted ``ids``; every query must be present."""
    position = np.minimum(np.searchsorted(ids, query), max(len(ids) - 1, 0))
    if len(query) and (len(ids) == 0 or np.any(ids[position] != query)):
        missing = query[ids[position] != query] if len(ids) else query
        raise ValueError(f"{what} holds ids missing from ids ({len(ids)},), e.g. {int(missing[0])}")
    return position


def merge_small_on_graph(
    lo: np.ndarray,
    hi: np.ndarray,
    total: np.ndarray,
    count: np.ndarray,
    ids: np.ndarray,
    sizes: np.ndarray,
    min_size: int,
    use_affinity: bool = False,
) -> np.ndarray:
    """Merges every node smaller than ``min_size`` into its strongest neighbour, on a region graph.

    The strongest neighbour has the largest ``count`` (faces shared) or, with ``use_affinity``,
    the largest mean ``total / count`` (mean affinity over the boundary). Ties go to the
    neighbour with the lower id. Merging runs in rounds: in each round every node that is still
    small and has a neighbour joins its strongest neighbour at once (so a chain of small nodes
    collapses together), then sizes, totals and counts are summed over the merged groups (so the
    score of merged groups stays exact), and in later rounds a group ranks as its lowest id.
    Rounds stop when no small group has a neighbour. The caller leaves background out.

    Ids may be any distinct uint64 values (e.g. block-offset fragment ids up to 2**63): they are
    only sorted and searched, never used as array indices.

    Args:
        lo, hi: ``(E,)`` ids of the two nodes of each edge; duplicate pairs are summed, pairs of a
            node with itself are ignored.
        total: ``(E,)`` evidence per edge (faces, or the sum of affinities); read with
            ``use_affinity``.
        count: ``(E,)`` voxel faces per edge.
        ids: ``(N,)`` distinct node ids, in any order; must hold every id of ``lo`` and ``hi``.
        sizes: ``(N,)`` voxels per node.
        min_size: nodes with fewer voxels are merged; 0 or 1 merges nothing.
        use_affinity: rank neighbours by mean affinity instead of contact.

    Returns:
        ``(N,)`` uint64: for each entry of ``ids``, the lowest id of the group it ends in.
    """
    ids = np.asarray(ids, dtype=np.uint64)
    sizes = np.asarray(sizes)
    lo, hi = np.asarray(lo, dtype=np.uint64), np.asarray(hi, dtype=np.uint64)
    total, count = np.asarray(total, dtype=np.float64), np.asarray(count, dtype=np.float64)
    if ids.ndim != 1 or sizes.shape != ids.shape:
        raise ValueError(f"ids {ids.shape} and sizes {sizes.shape} must be one entry per node")
    if not lo.shape == hi.shape == total.shape == count.shape or lo.ndim != 1:
        raise ValueError(f"lo {lo.shape}, hi {hi.shape}, total {total.shape} and count {count.shape} "
                         "must be one entry per edge")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]  # (N,); node index = rank of the id, so a lower index is a lower id
    if np.any(sorted_ids[1:] == sorted_ids[:-1]):
        raise ValueError(f"ids ({len(ids)},) are not distinct")
    n_nodes = len(ids)
    src, dst = _indices(sorted_ids, lo, "lo"), _indices(sorted_ids, hi, "hi")
    lo, hi, total, count = _aggregate(src, dst, total, count, max(n_nodes, 1))
    sizes = sizes[order].astype(np.int64)  # (n_nodes,)
    group = np.arange(n_nodes)  # node index -> current group index
    if min_size <= 1:
        lo = lo[:0]

    while len(lo):
        score = total / count if use_affinity else count
        src, dst, both = np.concatenate([lo, hi]), np.concatenate([hi, lo]), np.concatenate([score, score])
        small = sizes[src] < min_size
        if not small.any():
            break
        src, dst, both = src[small], dst[small], both[small]
        # Per source: best score first, then the lower index (the lower id).
        order_edges = np.lexsort((dst, -both, src))
        src, dst = src[order_edges], dst[order_edges]
        best = np.r_[True, src[1:] != src[:-1]]
        merges = coo_matrix(
            (np.ones(int(best.sum()), dtype=np.int8), (src[best], dst[best])), shape=(n_nodes, n_nodes)
        )
        # Components are numbered in order of their lowest node index, so group indices keep
        # ranking groups by their lowest id.
        n_nodes, component = connected_components(merges, directed=False)
        group = component[group]
        sizes = np.bincount(component, weights=sizes, minlength=n_nodes).astype(np.int64)
        lo, hi, total, count = _aggregate(component[lo], component[hi], total, count, n_nodes)

    # The lowest id of each group: ids are sorted, so the first node of a group has it.
    _, first, inverse = np.unique(group, return_index=True, return_inverse=True)
    representative = np.empty(len(ids), dtype=np.uint64)
    representative[order] = sorted_ids[first[inverse]]
    return representative


def merge_small_segments(
    segmentation: np.ndarray,
    min_size: int,
    affinities: np.ndarray | None = None,
    offsets: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """Merges every segment smaller than ``min_size`` voxels into its strongest neighbour.

    The strongest neighbour is the one sharing the most voxel faces (6-neighbourhood) or, when
    ``affinities`` and ``offsets`` are given, the one with the highest mean affinity over the
    boundary's nearest-neighbour edges (channels whose offset is one unit step). Ties go to the
    neighbour whose first voxel comes first in C order. Merging runs in rounds on the region
    graph (:func:`merge_small_on_graph`): in each round every segment that is still small and has
    a neighbour joins its strongest neighbour at once (so a chain of small segments collapses
    together), then sizes and contacts are summed over the merged groups. Rounds stop when no
    small segment has a neighbour; a small segment touching only background or the volume
    border stays. Background 0 never takes part.

    Args:
        segmentation: ``(Z, Y, X)`` integer labels, 0 = background. Not modified.
        min_size: segments with fewer voxels are merged; 0 or 1 only relabels.
        affinities: optional ``(C, Z, Y, X)`` affinities (1 = same object); channel ``c``
            compares ``v`` with ``v + offsets[c]``.
        offsets: the ``C`` offsets of ``affinities``.

    Returns:
        uint64 ``(Z, Y, X)`` segmentation with consecutive ids from 1 (0 stays 0).
    """
    labels = relabel_consecutive(segmentation)  # (Z, Y, X), ids 0..n in order of first voxel
    if (affinities is None) != (offsets is None):
        raise ValueError("affinities and offsets go together: pass both or neither")
    n_segments = int(labels.max(initial=0))
    if min_size <= 1 or n_segments <= 1:
        return labels

    # Per boundary face: the evidence (one per face, or the affinity) and one face.
    if affinities is None:
        first, second = _face_pairs(labels)
        values = np.ones(len(first), dtype=np.float64)
    else:
        first, second, values = _affinity_pairs(labels, affinities, offsets)
    ids = np.arange(1, n_segments + 1, dtype=np.uint64)  # lower id = first voxel earlier
    sizes = np.bincount(labels.ravel(), minlength=n_segments + 1)[1:]  # (n_segments,)
    group = merge_small_on_graph(first, second, values, np.ones(len(first)), ids, sizes, min_size,
                                 use_affinity=affinities is not None)
    lookup = np.concatenate([np.zeros(1, dtype=np.uint64), group])  # background stays 0
    return relabel_consecutive(lookup[labels])
