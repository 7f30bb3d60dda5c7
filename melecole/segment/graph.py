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

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cc3d
import numpy as np

from melecole.segment.agglomerate import agglomerate
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


def _graph(lo, hi, total, count, ids, sizes) -> Graph:
    """A :class:`Graph` with pairs ordered, self-pairs dropped, duplicate pairs and ids summed."""
    lo, hi = np.asarray(lo, dtype=np.uint64), np.asarray(hi, dtype=np.uint64)
    total, count = np.asarray(total, dtype=np.float64), np.asarray(count, dtype=np.float64)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    keep = lo != hi
    lo, hi, total, count = lo[keep], hi[keep], total[keep], count[keep]
    # Ranks of the ids, not the ids, make the pair keys: ids may be as large as 2**63.
    nodes, rank = np.unique(np.concatenate([lo, hi]), return_inverse=True)
    keys = rank[: len(lo)].astype(np.int64) * len(nodes) + rank[len(lo):]
    _, first, pair = np.unique(keys, return_index=True, return_inverse=True)
    ids, node = np.unique(np.asarray(ids, dtype=np.uint64), return_inverse=True)
    return Graph(
        lo=lo[first],
        hi=hi[first],
        total=np.bincount(pair, weights=total, minlength=len(first)),
        count=np.bincount(pair, weights=count, minlength=len(first)).astype(np.int64),
        ids=ids,
        sizes=np.bincount(node, weights=np.asarray(sizes, dtype=np.float64), minlength=len(ids)).astype(np.int64),
    )


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
    firsts, seconds, values = [], [], []
    for axis in range(3):
        here = list(region)
        start = max(region[axis].start, 1)  # voxels at index 0 have no partner in the arrays
        here[axis] = slice(start, max(start, region[axis].stop))
        there = list(here)
        there[axis] = slice(here[axis].start - 1, here[axis].stop - 1)
        u, v = fragments[tuple(here)], fragments[tuple(there)]
        boundary = (u != v) & (u != 0) & (v != 0)
        firsts.append(u[boundary])
        seconds.append(v[boundary])
        values.append(affinities[axis][tuple(here)][boundary])
    ids, sizes = np.unique(fragments[region], return_counts=True)
    first = np.concatenate(firsts)
    return _graph(first, np.concatenate(seconds), np.concatenate(values), np.ones(len(first)),
                  ids[ids != 0], sizes[ids != 0])


def merge_graphs(graphs: Iterable[Graph]) -> Graph:
    """One graph from several (e.g. blocks'): pairs and ids that repeat have their values summed.

    The ids must already be global (unique across blocks, e.g. by a per-block offset); they may
    be any uint64 values up to 2**63.
    """
    graphs = list(graphs)
    fields = ("lo", "hi", "total", "count", "ids", "sizes")
    dtypes = (np.uint64, np.uint64, np.float64, np.int64, np.uint64, np.int64)
    return _graph(*(np.concatenate([np.zeros(0, d)] + [getattr(g, f) for g in graphs]) for f, d in zip(fields, dtypes)))


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
    return _graph(_lookup(ids, labels, graph.lo), _lookup(ids, labels, graph.hi), graph.total, graph.count,
                  _lookup(ids, labels, graph.ids), graph.sizes)


def _merge_greedily(graph: Graph, nodes: np.ndarray, limit: float) -> np.ndarray:
    """The root node of every node after merging cheapest-first while the score is below ``limit``."""
    u_of, v_of = np.searchsorted(nodes, graph.lo).tolist(), np.searchsorted(nodes, graph.hi).tolist()
    total, count = graph.total.tolist(), graph.count.tolist()
    scores = 1.0 - graph.total / np.maximum(graph.count, 1)  # (E,)
    # key: the score an edge is queued at, a lower bound of its score (a merged edge's mean lies
    # between its parts'); None once the edge is gone. stale: its sums changed since queued.
    key: list[float | None] = scores.tolist()
    stale = [False] * len(key)
    neighbours: list[dict[int, int] | None] = [{} for _ in range(len(nodes))]  # node -> {node: edge}
    for e, (u, v) in enumerate(zip(u_of, v_of)):
        neighbours[u][v] = e
        neighbours[v][u] = e
    # The queue: the initial edges below the limit sorted once by (score, edge), and a heap of
    # re-scored edges; the next is the lower (key, edge) of the two heads, so ties go to the
    # lower edge. Every live edge with a key below the limit is queued exactly once.
    below = np.flatnonzero(scores < limit)
    below = below[np.argsort(scores[below], kind="stable")]
    sorted_keys, sorted_edges = scores[below].tolist(), below.tolist()
    heap: list[tuple[float, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    parent = list(range(len(nodes)))
    i, n_sorted = 0, len(sorted_edges)
    while True:
        if heap and (i == n_sorted or heap[0] < (sorted_keys[i], sorted_edges[i])):
            e = pop(heap)[1]
        elif i < n_sorted:
            e = sorted_edges[i]
            i += 1
        else:
            break
        if key[e] is None:
            continue
        if stale[e]:  # queued too low: queue it again at its score, if that is below the limit
            stale[e] = False
            key[e] = score = 1.0 - total[e] / count[e]
            if score < limit:
                push(heap, (score, e))
            continue
        a, b = u_of[e], v_of[e]
        if len(neighbours[a]) < len(neighbours[b]):
            a, b = b, a  # move the smaller adjacency into the larger one
        parent[b] = a
        key[e] = None
        into = neighbours[a]
        del into[b]
        for n, f in neighbours[b].items():
            if n == a:
                continue
            across = neighbours[n]
            del across[b]
            g = into.get(n)  # the edge a-n, when n is a neighbour of both
            if g is not None and key[g] <= key[f]:
                keep, drop = g, f
            else:
                keep, drop = f, g
                into[n] = across[a] = f  # the edge b-n now ends at a
                if u_of[f] == b:
                    u_of[f] = a
                else:
                    v_of[f] = a
            if drop is not None:  # the two edges to n become one (the lower key): sums and counts add
                total[keep] += total[drop]
                count[keep] += count[drop]
                key[drop] = None
                stale[keep] = True
        neighbours[b] = None
    root = np.asarray(parent, dtype=np.int64)
    while True:
        jumped = root[root]
        if np.array_equal(jumped, root):
            return root
        root = jumped


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
    so scores within ~1e-6 of the threshold or of each other may be ordered differently. A heap
    with lazy re-scoring: about 10 s for 1e6 edges.

    Args:
        graph: a fragment :class:`Graph` (e.g. :func:`merge_graphs` of every block's).
        threshold: merge while the lowest score is below it; higher merges more.

    Returns:
        ``(ids, segments)``: ``(N,)`` uint64 sorted ids of every fragment the graph names, and
        ``(N,)`` uint64 the segment of each, numbered 1..k in order of each segment's lowest id.
    """
    graph = _graph(graph.lo, graph.hi, graph.total, graph.count, graph.ids, graph.sizes)
    nodes = np.unique(np.concatenate([graph.ids, graph.lo, graph.hi]))  # (N,)
    root = _merge_greedily(graph, nodes, float(np.float32(threshold)))
    _, first, inverse = np.unique(root, return_index=True, return_inverse=True)
    numbers = np.empty(len(first), dtype=np.uint64)
    numbers[np.argsort(first)] = np.arange(1, len(first) + 1, dtype=np.uint64)
    return nodes, numbers[inverse]


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
