"""Greedy mean-affinity merging of a region graph, compiled: the driver step of blockwise agglomeration.

Both functions take the graph as arrays over node indices ``0..N-1`` and return the root of every
node after merging, cheapest edge first, while the lowest score ``1 - total / count`` is below a
limit; when two regions merge, their edges to a common neighbour become one (sums and counts
add). Equal scores go to the lower edge index; a merged pair keeps the index of the part queued
at the lower score (the other part's on a tie: the edge already ending at the surviving region).

- :func:`merge_greedily` (numba): arrays only, about 60 bytes per edge besides its inputs, for
  the millions of fragments of a real volume (the Python version needs some 2.5 kB per
  fragment); :func:`merge_in_place` overwrites its inputs instead of copying them and leaves
  the graph between the final regions in them.
- :func:`merge_greedily_python`: the same algorithm on dicts and a heap, the reference the
  tests hold the compiled one to (identical roots, ties included).

The queue is the edges below the limit sorted once by (score, index) plus a heap of re-scored
edges; a merged pair's mean lies between its parts', so the lower part's score is a lower bound
and the pair is re-scored (marked stale) when it comes up. Each region's incident edges are a
linked list; merging moves the region of fewer live edges into the other and finds the common
neighbours through one hash table of (region, region) -> edge.
"""

from __future__ import annotations

import heapq

import numba
import numpy as np

__all__ = ["merge_greedily", "merge_greedily_python"]


def _checked(u, v, total, count, n_nodes):
    u, v = np.ascontiguousarray(u, dtype=np.int64), np.ascontiguousarray(v, dtype=np.int64)
    total, count = np.ascontiguousarray(total, dtype=np.float64), np.ascontiguousarray(count, dtype=np.float64)
    if not (u.shape == v.shape == total.shape == count.shape) or u.ndim != 1:
        raise ValueError(f"edge arrays must be (E,), got u {u.shape}, v {v.shape}, total {total.shape}, count {count.shape}")
    if u.size and (min(u.min(), v.min()) < 0 or max(u.max(), v.max()) >= n_nodes or (u == v).any()):
        raise ValueError(f"edges must join two different nodes among 0..{n_nodes - 1}")
    if n_nodes >= 3_000_000_000 or 2 * u.size >= 2**31:
        raise ValueError(f"{n_nodes} nodes, {u.size} edges: beyond one driver (pair keys overflow int64, "
                         "incidence lists int32)")
    return u, v, total, count


def _queue(total: np.ndarray, count: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every edge, and the edges below ``limit`` in (score, index) order."""
    scores = 1.0 - total / np.maximum(count, 1.0)  # (E,)
    below = np.flatnonzero(scores < limit)
    return scores, below[np.argsort(scores[below], kind="stable")]


def merge_greedily(u, v, total, count, n_nodes: int, limit: float) -> np.ndarray:
    """Roots ``(N,)`` int64 of every node after greedy merging below ``limit`` (compiled).

    Args:
        u, v: ``(E,)`` node indices of each edge; pairs distinct, ``u != v``.
        total: ``(E,)`` affinity sums; count: ``(E,)`` voxel-edge counts (> 0).
        n_nodes: N, the number of nodes.
        limit: merge while the lowest score is strictly below it.
    """
    u, v, total, count = _checked(u, v, total, count, n_nodes)
    return _merge_checked(u.copy(), v.copy(), total.copy(), count.copy(), n_nodes, limit)[0]


def merge_in_place(u, v, total, count, n_nodes: int, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge_greedily` that overwrites its arrays instead of copying them (for a caller
    that no longer needs them: 32 bytes per edge saved) and also returns the graph between the
    final regions.

    Args:
        u, v: ``(E,)`` int64 node indices; total, count: ``(E,)`` float64; all C-contiguous.

    Returns:
        ``(roots, alive)``: ``(N,)`` int64 root of every node and ``(E,)`` bool. The edges still
        alive join two different final regions, one edge per touching pair: ``u`` and ``v``
        then hold the two roots, ``total`` and ``count`` the sums over every original edge
        between those regions.
    """
    for name, array, dtype in (("u", u, np.int64), ("v", v, np.int64), ("total", total, np.float64),
                               ("count", count, np.float64)):
        if not (isinstance(array, np.ndarray) and array.dtype == dtype and array.flags.c_contiguous and array.flags.writeable):
            raise ValueError(f"merge_in_place overwrites {name}: it must be a writeable C-contiguous {np.dtype(dtype)} array")
    _checked(u, v, total, count, n_nodes)
    return _merge_checked(u, v, total, count, n_nodes, limit)


def _merge_checked(u, v, total, count, n_nodes: int, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge_in_place` on arrays already checked and converted (checked once, not twice)."""
    scores, order = _queue(total, count, limit)
    alive = np.ones(len(u), dtype=bool)
    roots = _merge(u, v, total, count, scores, order, alive, int(n_nodes), float(limit))
    return roots, alive


@numba.njit(cache=True)
def _pair(a, b, n):
    return min(a, b) * n + max(a, b)


# An open-addressing hash table from a pair of regions to the edge joining them: ``slots`` holds
# edge indices (-1 = empty), the key of an edge is the pair of its current ends; linear probing
# from a multiplicative hash; deletion shifts the following entries back (no tombstones, so the
# table never needs rebuilding). 8 bytes per slot, 4/3 slots per edge: merging never adds a
# pair without removing one, so the table never fills beyond its first load of 3/4.
_EMPTY = -1


@numba.njit(cache=True)
def _home(key, capacity):
    # The golden-ratio multiplier 0x9E3779B97F4A7C15 as a signed int64 (numba would make the
    # unsigned literal a uint64 and the product a float); the product wraps, as intended. Its
    # top 31 bits are scaled to the capacity (any size, not only powers of two).
    mixed = ((key * np.int64(-7046029254386353131)) >> 33) & 0x7FFFFFFF
    return (mixed * capacity) >> 31


@numba.njit(cache=True)
def _table(size):
    return np.full(max(16, size + size // 3 + 1), _EMPTY, dtype=np.int64)


@numba.njit(cache=True)
def _key(slots, slot, end_u, end_v, n):
    edge = slots[slot]
    return _pair(end_u[edge], end_v[edge], n)


@numba.njit(cache=True)
def _find(slots, key, end_u, end_v, n):
    capacity = slots.shape[0]
    slot = _home(key, capacity)
    while slots[slot] != _EMPTY:
        if _key(slots, slot, end_u, end_v, n) == key:
            return slot
        slot += 1
        if slot == capacity:
            slot = 0
    return -1


@numba.njit(cache=True)
def _put(slots, key, edge):
    """Inserts an edge whose key is known to be absent."""
    capacity = slots.shape[0]
    slot = _home(key, capacity)
    while slots[slot] != _EMPTY:
        slot += 1
        if slot == capacity:
            slot = 0
    slots[slot] = edge


@numba.njit(cache=True)
def _delete(slots, slot, end_u, end_v, n):
    """Empties ``slot``, moving back each following entry whose probe passed over it."""
    capacity = slots.shape[0]
    hole = slot
    nxt = slot
    while True:
        nxt += 1
        if nxt == capacity:
            nxt = 0
        if slots[nxt] == _EMPTY:
            break
        home = _home(_key(slots, nxt, end_u, end_v, n), capacity)
        # The entry at nxt may fill the hole unless its home lies cyclically in (hole, nxt].
        if (nxt - home) % capacity >= (nxt - hole) % capacity:
            slots[hole] = slots[nxt]
            hole = nxt
    slots[hole] = _EMPTY


@numba.njit(cache=True)
def _merge(end_u, end_v, total, count, key, order, alive, n, limit):  # pragma: no cover - compiled
    n_edges = end_u.shape[0]
    stale = np.zeros(n_edges, dtype=np.bool_)
    degree = np.zeros(n, dtype=np.int64)
    # Incidence lists: slot 2e is edge e at its u end, 2e + 1 at its v end; a slot moves with
    # its region's list, so every slot in region r's list is an edge end at r.
    head = np.full(n, -1, dtype=np.int64)
    tail = np.full(n, -1, dtype=np.int64)
    after = np.full(2 * n_edges, -1, dtype=np.int32)  # 2E < 2**31, checked by _checked
    slots = _table(n_edges)
    for e in range(n_edges):
        _put(slots, _pair(end_u[e], end_v[e], n), e)
        for slot, node in ((2 * e, end_u[e]), (2 * e + 1, end_v[e])):
            degree[node] += 1
            if head[node] < 0:
                head[node] = slot
            else:
                after[tail[node]] = slot
            tail[node] = slot
    parent = np.arange(n)
    heap = [(0.0, np.int64(0))]
    heap.pop()
    i = 0
    n_sorted = order.shape[0]
    while True:
        if len(heap) > 0 and (i == n_sorted or heap[0] < (key[order[i]], order[i])):
            e = heapq.heappop(heap)[1]
        elif i < n_sorted:
            e = order[i]
            i += 1
        else:
            break
        if not alive[e]:
            continue
        if stale[e]:
            stale[e] = False
            score = 1.0 - total[e] / count[e]
            key[e] = score
            if score < limit:
                heapq.heappush(heap, (score, e))
            continue
        a, b = end_u[e], end_v[e]
        if degree[a] < degree[b]:
            a, b = b, a  # move the region of fewer live edges
        parent[b] = a
        alive[e] = False
        _delete(slots, _find(slots, _pair(a, b, n), end_u, end_v, n), end_u, end_v, n)
        degree[a] -= 1
        degree[b] -= 1
        # b's list, its dead slots dropped on the way, is appended to a's.
        first, last = -1, -1
        slot = head[b]
        while slot >= 0:
            f = slot // 2
            if alive[f]:
                other = end_v[f] if slot % 2 == 0 else end_u[f]
                _delete(slots, _find(slots, _pair(b, other, n), end_u, end_v, n), end_u, end_v, n)
                pair = _pair(a, other, n)
                found = _find(slots, pair, end_u, end_v, n)
                g = slots[found] if found >= 0 else -1
                if g >= 0 and key[g] <= key[f]:
                    keep, drop = g, f
                else:
                    keep, drop = f, g
                    # f takes g's place (or a new one) in the table; its end moves to a at once,
                    # before any probe reads its key.
                    if found >= 0:
                        slots[found] = f
                    else:
                        _put(slots, pair, f)
                    if slot % 2 == 0:
                        end_u[f] = a
                    else:
                        end_v[f] = a
                    degree[a] += 1
                if drop >= 0:
                    total[keep] += total[drop]
                    count[keep] += count[drop]
                    alive[drop] = False
                    stale[keep] = True
                    degree[end_u[drop]] -= 1
                    degree[end_v[drop]] -= 1
                if alive[f]:
                    if last < 0:
                        first = slot
                    else:
                        after[last] = slot
                    last = slot
            slot = after[slot]
        if last >= 0:
            after[last] = -1
            if head[a] < 0:
                head[a] = first
            else:
                after[tail[a]] = first
            tail[a] = last
        head[b] = -1
        tail[b] = -1
    for node in range(n):
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:
            parent[node], node = root, parent[node]
    return parent


def merge_greedily_python(u, v, total, count, n_nodes: int, limit: float) -> np.ndarray:
    """:func:`merge_greedily` in plain Python: the reference (about 10 s per 1e6 edges)."""
    u, v, total, count = _checked(u, v, total, count, n_nodes)
    scores, order = _queue(total, count, limit)
    u_of, v_of, total, count = u.tolist(), v.tolist(), total.tolist(), count.tolist()
    key: list[float | None] = scores.tolist()  # None once the edge is gone
    stale = [False] * len(key)
    neighbours: list[dict[int, int] | None] = [{} for _ in range(n_nodes)]  # node -> {node: edge}
    for e, (a, b) in enumerate(zip(u_of, v_of)):
        neighbours[a][b] = e
        neighbours[b][a] = e
    sorted_keys, sorted_edges = scores[order].tolist(), order.tolist()
    heap: list[tuple[float, int]] = []
    parent = list(range(n_nodes))
    i, n_sorted = 0, len(sorted_edges)
    while True:
        if heap and (i == n_sorted or heap[0] < (sorted_keys[i], sorted_edges[i])):
            e = heapq.heappop(heap)[1]
        elif i < n_sorted:
            e = sorted_edges[i]
            i += 1
        else:
            break
        if key[e] is None:
            continue
        if stale[e]:
            stale[e] = False
            key[e] = score = 1.0 - total[e] / count[e]
            if score < limit:
                heapq.heappush(heap, (score, e))
            continue
        a, b = u_of[e], v_of[e]
        if len(neighbours[a]) < len(neighbours[b]):
            a, b = b, a
        parent[b] = a
        key[e] = None
        into = neighbours[a]
        del into[b]
        for other, f in neighbours[b].items():
            if other == a:
                continue
            across = neighbours[other]
            del across[b]
            g = into.get(other)
            if g is not None and key[g] <= key[f]:
                keep, drop = g, f
            else:
                keep, drop = f, g
                into[other] = across[a] = f
                if u_of[f] == b:
                    u_of[f] = a
                else:
                    v_of[f] = a
            if drop is not None:
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
