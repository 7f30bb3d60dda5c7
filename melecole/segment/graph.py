"""Region graphs of fragments: the maths of segmentation shared by whole volumes and blocks.

The agglomeration of :mod:`melecole.segment.agglomerate` (waterz: watershed fragments, then
hierarchical merging by mean affinity) and the small-segment clean-up, split into steps that
work on one block at a time and on a graph gathered from all blocks:

1. :func:`block_fragments`: waterz's watershed fragments of a block read with context, cropped
   to the block.
2. :func:`fragment_graph`: the region graph of a block's fragments: affinity sums and counts
   of every touching pair inside the block and across its lower faces, fragment sizes.
3. :func:`merge_graphs` gathers the blocks' graphs, :func:`agglomerate_graph` merges fragments
   into segments by waterz's rule, :func:`relabel_graph` turns the fragment graph into the
   segment graph on which :func:`melecole.segment.postprocess.merge_small_on_graph` merges
   small segments.

:func:`segment_via_graph` runs the chain in memory, on one block or many: it is the reference
a blockwise run must reproduce. Ids on a graph are any distinct uint64 values (block-offset
fragment ids may reach 2**63): they are sorted and searched, never used as array indices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cc3d
import fastremap
import numpy as np

from melecole.segment.agglomerate import agglomerate
from melecole.segment.greedy_merge import merge_in_place
from melecole.segment.postprocess import merge_small_on_graph, relabel_consecutive

Region = tuple[slice, slice, slice]

# waterz merges nothing up to this threshold (it starts as "merged until the lowest float" and
# skips any threshold not above that), so it returns its watershed fragments as they are.
_FRAGMENTS_ONLY = float(np.finfo(np.float32).min)

# segment_via_graph makes ids unique across blocks with an offset of block index << _ID_BITS.
_ID_BITS = 40


@dataclass(frozen=True)
class Graph:
    """Region graph of fragments: touching pairs with their affinity evidence, and sizes.

    Attributes:
        lo: ``(E,)`` uint64 lower id of each pair; pairs are unique and sorted by (lo, hi).
        hi: ``(E,)`` uint64 higher id of each pair (``lo < hi``).
        total: ``(E,)`` float64 sum of the affinities over the pair's voxel edges.
        count: ``(E,)`` int64 number of the pair's voxel edges (faces shared).
        ids: ``(N,)`` uint64 sorted ids of the fragments with voxels in the write region(s);
            a block's graph may also name halo fragments in ``lo`` / ``hi`` that are not here.
        sizes: ``(N,)`` int64 voxels of each of ``ids`` inside the write region(s).
    """

    lo: np.ndarray
    hi: np.ndarray
    total: np.ndarray
    count: np.ndarray
    ids: np.ndarray
    sizes: np.ndarray

    def __post_init__(self) -> None:
        edges = {a: getattr(self, a).shape for a in ("lo", "hi", "total", "count")}
        if len(set(edges.values())) != 1 or len(edges["lo"]) != 1:
            raise ValueError(f"edge arrays must be one entry per pair, got shapes {edges}")
        if self.ids.ndim != 1 or self.ids.shape != self.sizes.shape:
            raise ValueError(f"ids {self.ids.shape} and sizes {self.sizes.shape} must be one entry per fragment")


def normalised_graph(lo, hi, total, count, ids, sizes) -> Graph:
    """A :class:`Graph` with pairs ordered, self-pairs dropped, duplicate pairs and ids summed.

    One sort of the pairs and one of the ids, then sums over runs of equal keys: about 80 bytes
    per pair at the peak besides the inputs (the driver of a blockwise run merges tens of
    millions of pairs here).
    """
    lo, hi = np.asarray(lo, dtype=np.uint64), np.asarray(hi, dtype=np.uint64)
    total, count = np.asarray(total, dtype=np.float64), np.asarray(count, dtype=np.int64)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    keep = lo != hi
    if not keep.all():
        lo, hi, total, count = lo[keep], hi[keep], total[keep], count[keep]
    del keep
    order = np.lexsort((hi, lo))  # by lo, then hi; ids are compared as values, never indices
    lo = lo[order]  # one gather at a time: the previous array is freed before the next
    hi = hi[order]
    total = total[order]
    count = count[order]
    del order
    starts = _run_starts(lo, hi)
    if starts is not None:
        lo, hi, total, count = lo[starts], hi[starts], np.add.reduceat(total, starts), np.add.reduceat(count, starts)
    ids, sizes = np.asarray(ids, dtype=np.uint64), np.asarray(sizes, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    ids, sizes = ids[order], sizes[order]
    starts = _run_starts(ids)
    if starts is not None:
        ids, sizes = ids[starts], np.add.reduceat(sizes, starts)
    return Graph(lo=lo, hi=hi, total=total, count=count, ids=ids, sizes=sizes)


def _run_starts(*keys: np.ndarray) -> np.ndarray | None:
    """Starts of the runs of equal keys (sorted together), or None when every key is distinct."""
    new = np.ones(len(keys[0]), dtype=bool)
    if len(new) > 1:
        new[1:] = False
        for key in keys:
            new[1:] |= key[1:] != key[:-1]
    return None if new.all() else np.flatnonzero(new)


def _lookup(ids: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values[i]`` for each query equal to ``ids[i]``; every query must be among ``ids``."""
    order = np.argsort(ids, kind="stable")
    ids, values = ids[order], values[order]
    query = np.asarray(query, dtype=np.uint64)
    position = np.searchsorted(ids, query)
    found = position < len(ids)
    found[found] = ids[position[found]] == query[found]
    if not found.all():
        raise ValueError(f"{np.count_nonzero(~found)} of {query.size} queried ids are not among the ids {ids.shape}")
    return values[position]


def _region(write_region: Sequence[slice] | None, shape: tuple[int, ...]) -> Region:
    """``write_region`` as three slices with explicit bounds inside ``shape``."""
    if write_region is None:
        return tuple(slice(0, n) for n in shape)
    if len(write_region) != 3 or not all(isinstance(s, slice) and s.step in (None, 1) for s in write_region):
        raise ValueError(f"write_region {write_region} must be three slices with step 1 into {shape}")
    bounds = [s.indices(n)[:2] for s, n in zip(write_region, shape)]
    return tuple(slice(start, max(start, stop)) for start, stop in bounds)


def _checked_affinities(affinities: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    affinities = np.asarray(affinities)
    if affinities.ndim != 4 or affinities.shape[0] != 3 or (shape is not None and affinities.shape[1:] != shape):
        expected = f"(3,) + fragments {shape}" if shape is not None else "(3, Z, Y, X) nearest-neighbour channels"
        raise ValueError(f"affinities {affinities.shape} must be {expected}")
    return affinities


def block_fragments(affinities: np.ndarray, write_region: Sequence[slice] | None = None) -> np.ndarray:
    """Waterz's watershed fragments of a read region, cropped to its write region.

    These are exactly the fragments :func:`melecole.segment.agglomerate.agglomerate` merges:
    waterz's initial over-segmentation (steepest-ascent watershed of the affinity graph,
    affinity thresholds 0.0001 / 0.9999), before any merge. The watershed sees the whole read
    region, so fragments near the block's faces are shaped by the context; the crop can cut a
    fragment in pieces, and every 6-connected piece inside the write region becomes a fragment
    of its own.

    Args:
        affinities: ``(3, Z, Y, X)`` nearest-neighbour affinities of the read region (offsets
            (-1, 0, 0), (0, -1, 0), (0, 0, -1); 1 = same object). Not modified.
        write_region: three slices into the read region; None keeps all of it.

    Returns:
        uint64 fragments of the write region's shape, ids 1..n in order of first voxel (C
        order); 0 only where waterz leaves background (voxels whose six affinities are all
        at most 0.0001).
    """
    affinities = _checked_affinities(affinities)
    fragments = agglomerate(affinities, [_FRAGMENTS_ONLY])[0]  # (Z, Y, X) of the read region
    fragments = fragments[_region(write_region, fragments.shape)]
    if fragments.size == 0:
        return fragments.copy()
    pieces = cc3d.connected_components(fragments, connectivity=6, out_dtype=np.uint64)
    return relabel_consecutive(pieces)


def fragment_graph(
    fragments: np.ndarray, affinities: np.ndarray, write_region: Sequence[slice] | None = None
) -> Graph:
    """The region graph of the fragments of a write region, including its lower-face halo.

    Counts every nearest-neighbour voxel pair ``(v, v + offset_c)`` with ``v`` inside
    ``write_region`` and the partner anywhere in the arrays, when the two carry different
    nonzero fragments; its affinity is ``affinities[c][v]``. Pass the arrays over the write
    region grown by one voxel at its lower z, y and x faces (where the volume has voxels there):
    then, over a grid of blocks, every voxel pair of the volume is counted by exactly one block,
    and :func:`merge_graphs` of the blocks equals the graph of the whole volume.

    Args:
        fragments: ``(Z, Y, X)`` fragment ids (any distinct uint64 values, 0 = background).
        affinities: ``(3, Z, Y, X)`` affinities at offsets (-1, 0, 0), (0, -1, 0), (0, 0, -1).
        write_region: three slices into the arrays; None counts all of them.

    Returns:
        The :class:`Graph` of the write region (sizes counted inside it only).
    """
    fragments = np.asarray(fragments)
    if fragments.ndim != 3:
        raise ValueError(f"fragments {fragments.shape} must be (Z, Y, X)")
    affinities = _checked_affinities(affinities, fragments.shape)
    region = _region(write_region, fragments.shape)
    # Dense local ids (fastremap, the smallest unsigned dtype that fits) make each voxel pair one
    # int64 key: about 40 bytes per boundary voxel pair at the peak instead of ~100 for pairs of
    # uint64 ids sorted together. ``original[d]`` is the id of dense id d (0 stays 0).
    dense, remap = fastremap.renumber(fragments, preserve_zero=True, in_place=False)
    n = max(remap.values(), default=0) + 1
    original = np.zeros(n, dtype=np.uint64)
    original[np.fromiter(remap.values(), np.int64, len(remap))] = np.fromiter(remap.keys(), np.uint64, len(remap))
    keys, values = [], []
    for axis in range(3):
        here = list(region)
        start = max(region[axis].start, 1)  # voxels at index 0 have no partner in the arrays
        here[axis] = slice(start, max(start, region[axis].stop))
        there = list(here)
        there[axis] = slice(here[axis].start - 1, here[axis].stop - 1)
        u, v = dense[tuple(here)], dense[tuple(there)]
        boundary = (u != v) & (u != 0) & (v != 0)
        first, second = u[boundary].astype(np.int64), v[boundary].astype(np.int64)
        key = np.minimum(first, second) * n + np.maximum(first, second)
        del u, v, first, second
        # Summed per pair axis by axis: the peak holds one axis's voxel pairs, not all three.
        unique, pair = np.unique(key, return_inverse=True)
        keys.append(unique)
        values.append(np.stack([np.bincount(pair, weights=affinities[axis][tuple(here)][boundary], minlength=len(unique)),
                                np.bincount(pair, minlength=len(unique)).astype(np.float64)]))
        del key, boundary, pair
    pairs, pair = np.unique(np.concatenate(keys), return_inverse=True)
    sums = np.concatenate(values, axis=1)  # (2, pairs of the three axes): affinity sums, counts
    total = np.bincount(pair, weights=sums[0], minlength=len(pairs))
    count = np.bincount(pair, weights=sums[1], minlength=len(pairs)).astype(np.int64)
    del keys, values, pair, sums
    sizes = np.bincount(dense[region].ravel(), minlength=n)[1:]  # (n - 1,) voxels of dense ids 1..n-1
    inside = sizes > 0
    return normalised_graph(original[pairs // n], original[pairs % n], total, count, original[1:][inside], sizes[inside])


def merge_graphs(graphs: Iterable[Graph]) -> Graph:
    """One graph from several (e.g. blocks'): pairs and ids that repeat have their values summed.

    The ids must already be global (unique across blocks, e.g. by a per-block offset); they may
    be any uint64 values up to 2**63.
    """
    graphs = list(graphs)
    return normalised_graph(*(np.concatenate([np.zeros(0, dtype)] + [getattr(g, name) for g in graphs])
                              for name, dtype in FIELDS.items()))


# The arrays of a Graph and their dtypes, in the order of the constructor.
FIELDS = {"lo": np.uint64, "hi": np.uint64, "total": np.float64, "count": np.int64, "ids": np.uint64,
          "sizes": np.int64}


def relabel_graph(graph: Graph, ids: np.ndarray, labels: np.ndarray) -> Graph:
    """The graph between groups of fragments (e.g. segments), each fragment ``ids[i]`` in group
    ``labels[i]``: pairs inside a group vanish, the rest and the sizes are summed per group.

    Args:
        graph: a :class:`Graph`; every id it names must be among ``ids``.
        ids: ``(N,)`` distinct uint64 fragment ids, in any order.
        labels: ``(N,)`` the group of each (any uint64 values).
    """
    ids, labels = np.asarray(ids, dtype=np.uint64), np.asarray(labels, dtype=np.uint64)
    if ids.ndim != 1 or ids.shape != labels.shape:
        raise ValueError(f"ids {ids.shape} and labels {labels.shape} must be one entry per fragment")
    return normalised_graph(_lookup(ids, labels, graph.lo), _lookup(ids, labels, graph.hi), graph.total, graph.count,
                  _lookup(ids, labels, graph.ids), graph.sizes)


def _normalised(graph: Graph) -> bool:
    """Whether the pairs are ordered (lo < hi), unique and sorted, and the ids sorted and unique."""
    lo, hi, ids = graph.lo, graph.hi, graph.ids
    ordered = bool(np.all(lo < hi)) and bool(np.all(ids[1:] > ids[:-1]))
    return ordered and bool(np.all((lo[1:] > lo[:-1]) | ((lo[1:] == lo[:-1]) & (hi[1:] > hi[:-1]))))


def _found(sorted_ids: np.ndarray, query: np.ndarray, position: np.ndarray) -> bool:
    """Whether every ``query`` is at its ``position`` (from ``searchsorted``) in ``sorted_ids``."""
    inside = position < len(sorted_ids)
    return bool(inside.all()) and bool(np.array_equal(sorted_ids[position], query))


def agglomerate_graph(graph: Graph, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Waterz's mean-affinity agglomeration of a fragment graph.

    Repeatedly merges the two current regions joined by the edge of lowest score
    ``1 - total / count`` (one minus the mean affinity over their shared voxel edges), while
    that score is strictly below ``threshold`` taken as a float32, as waterz compares. When two
    regions merge, their edges to a common neighbour become one by adding sums and counts. This
    is waterz's ``OneMinus<MeanAffinity>`` merging, with two differences that only show on
    near-ties: equal scores go to the edge first in the graph's (lo, hi) order (an edge made
    of two keeps the place of the part with the lower score), where waterz leaves them to its
    heap; and scores are float64 ratios of the sums, where waterz keeps float32 running means,
    so scores within ~1e-6 of the threshold or of each other may be ordered differently.
    Compiled (:mod:`melecole.segment.greedy_merge`): seconds for 1e6 fragments, about 100
    bytes per pair at the peak.

    Args:
        graph: a fragment :class:`Graph` (e.g. :func:`merge_graphs` of every block's).
        threshold: merge while the lowest score is below it; higher merges more.

    Returns:
        ``(ids, segments)``: ``(N,)`` uint64 sorted ids of every fragment the graph names, and
        ``(N,)`` uint64 the segment of each, numbered 1..k in order of each segment's lowest id.
    """
    nodes, _, u, v = node_positions(graph)
    segments, _ = agglomerate_positions(nodes, u, v, graph.total.copy(), graph.count.astype(np.float64),
                                        np.zeros(len(nodes), np.int64), threshold)
    return nodes, segments


def node_positions(graph: Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The graph over node positions: ``(nodes, sizes, u, v)``, sorted ids of every fragment the
    graph names, their sizes (0 for a halo fragment without one) and the position of each
    pair's two ids among them (int64, fresh arrays)."""
    if not _normalised(graph):
        graph = normalised_graph(graph.lo, graph.hi, graph.total, graph.count, graph.ids, graph.sizes)
    nodes, sizes = graph.ids, graph.sizes  # (N,): every fragment of merged blocks has its size
    u, v = np.searchsorted(nodes, graph.lo), np.searchsorted(nodes, graph.hi)  # (E,)
    if not (_found(nodes, graph.lo, u) and _found(nodes, graph.hi, v)):
        nodes = np.unique(np.concatenate([graph.ids, graph.lo, graph.hi]))
        sizes = np.zeros(len(nodes), np.int64)
        sizes[np.searchsorted(nodes, graph.ids)] = graph.sizes
        u, v = np.searchsorted(nodes, graph.lo), np.searchsorted(nodes, graph.hi)
    return nodes, sizes, u, v


def agglomerate_positions(nodes: np.ndarray, u: np.ndarray, v: np.ndarray, total: np.ndarray, count: np.ndarray,
                          sizes: np.ndarray, threshold: float) -> tuple[np.ndarray, Graph]:
    """:func:`agglomerate_graph` on the arrays of :func:`node_positions`, overwriting ``u``,
    ``v``, ``total`` and ``count`` (int64 and float64 arrays the caller gives up: a driver with
    tens of millions of pairs saves their copies), and the graph between the segments.

    Returns:
        ``(segments, between)``: ``(N,)`` uint64 segment of each node, numbered 1..k in order
        of each segment's lowest id; the :class:`Graph` between segments 1..k (sums and counts
        over all their fragments' pairs, sizes summed), as :func:`relabel_graph` gives.
    """
    root, alive = merge_in_place(u, v, total, count, len(nodes), float(np.float32(threshold)))
    _, first, inverse = np.unique(root, return_index=True, return_inverse=True)
    numbers = np.empty(len(first), dtype=np.uint64)
    numbers[np.argsort(first)] = np.arange(1, len(first) + 1, dtype=np.uint64)
    segments = numbers[inverse]  # (N,)
    del root, first, inverse
    # The edges still alive join two final regions, one per touching pair, ends at the roots.
    between = normalised_graph(segments[u[alive]], segments[v[alive]], total[alive], count[alive], segments, sizes)
    return segments, between


def _blocks(shape: tuple[int, ...], block_shape: Sequence[int] | None) -> list[Region]:
    from melecole.blockwise.geometry import block_regions

    block_shape = tuple(shape) if block_shape is None else tuple(int(b) for b in block_shape)
    if len(block_shape) != 3 or min(block_shape) < 1:
        raise ValueError(f"block_shape {block_shape} must be three positive sizes for a volume {shape}")
    return block_regions(shape, block_shape)


def segment_via_graph(
    affinities: np.ndarray,
    threshold: float,
    min_size: int,
    block_shape: Sequence[int] | None = None,
    context: int = 4,
) -> np.ndarray:
    """Agglomeration and small-segment merging through block graphs, in memory (the reference).

    The volume is cut into blocks of ``block_shape``. Pass one: each block's fragments
    (:func:`block_fragments` of the block grown by ``context`` voxels), made unique by adding
    ``block index << 40``. Pass two: each block's :func:`fragment_graph` over the block grown by
    one voxel at its lower faces. Then the graphs are merged, agglomerated at ``threshold``,
    small segments merged on the segment graph by contact (as
    :func:`melecole.segment.postprocess.merge_small_segments` does on a volume), and the
    fragments relabelled. With one block it is ``merge_small_segments(agglomerate(affinities,
    [threshold])[0], min_size)``.

    Args:
        affinities: ``(3, Z, Y, X)`` nearest-neighbour affinities. Not modified.
        threshold: agglomeration threshold (see :func:`agglomerate_graph`).
        min_size: segments with fewer voxels join their neighbour of most contact.
        block_shape: ``(bz, by, bx)``; None is one block.
        context: voxels read around each block for its fragments.

    Returns:
        uint64 ``(Z, Y, X)`` segmentation, ids 1..n in order of first voxel (0 = background).
    """
    from melecole.blockwise.geometry import grow, inner

    affinities = _checked_affinities(affinities)
    shape = affinities.shape[1:]
    blocks = _blocks(shape, block_shape)
    fragments = np.zeros(shape, dtype=np.uint64)  # (Z, Y, X), global ids
    for index, block in enumerate(blocks):
        read = grow(block, context, context, shape)
        local = block_fragments(affinities[(slice(None), *read)], inner(block, read))
        fragments[block] = np.where(local == 0, np.uint64(0), local + np.uint64(index << _ID_BITS))
    graphs = []
    for block in blocks:
        grown = grow(block, 1, 0, shape)
        graphs.append(fragment_graph(fragments[grown], affinities[(slice(None), *grown)], inner(block, grown)))
    graph = merge_graphs(graphs)
    ids, segments = agglomerate_graph(graph, threshold)
    between = relabel_graph(graph, ids, segments)
    final = merge_small_on_graph(between.lo, between.hi, between.count, between.count,
                                 between.ids, between.sizes, min_size)
    labels = _lookup(between.ids, final, segments)  # (N,) final label of each fragment
    segmentation = np.zeros(shape, dtype=np.uint64)
    foreground = fragments != 0
    segmentation[foreground] = _lookup(ids, labels, fragments[foreground])
    return relabel_consecutive(segmentation)
