"""The Mutex Watershed on a voxel grid (Wolf et al. 2019, arXiv 1904.12654), compiled with numba.

The greedy algorithm and the edge order are those of bioimage-cpp's ``mutex_watershed_grid``
(what python-elf's ``mutex_watershed`` runs), so the partitions are identical, ties included:

- Weights are float32, computed as elf computes them from the cut probabilities ``r = 1 - a``
  our wrapper hands it: a repulsive edge weighs ``r``, an attractive one ``1 - r`` (which is
  ``a`` rounded to a multiple of 2**-24 when ``a < 0.5``; the rounding can create ties, so it is
  copied). uint8 affinities are read as ``value / 255`` in float32, as stored predictions decode.
- Order: decreasing weight; equal weights by increasing edge index ``c * N + v`` (channel, then
  voxel in C order): the tie rule of bioimage-cpp's ``std::sort``. Attractive channels come
  first, so of two edges of equal weight an attractive one is always processed first.
- An attractive edge joins two clusters unless a mutex separates them; a repulsive edge puts a
  mutex between two clusters unless they are one already.

Two facts make it fast. A repulsive edge processed while its ends were in one cluster changes
nothing, and one processed while they were apart is a mutex from then on: so two clusters are
separated exactly when some valid repulsive edge between them weighs more than the attractive
edge now processed. Mutexes need no storage, and only the attractive edges need sorting: a
counting sort into buckets of weight, each bucket laid out channel by channel so that its edges
already stand in index order (uint8 inputs: one bucket per value, nothing else to sort; float32:
65536 equal-width buckets, a bucket holding different weights sorted stably when reached).

Clusters are a union-find (path halving, union by size), each root with a block of its voxels
(doubled when full). An attractive edge between two clusters looks at the repulsive edges of its
two ends (where a separating edge usually is), then at those of all the smaller cluster's
voxels. A voxel's repulsive edges are one row of small integer keys: a voxel costs one cache
line plus a ``find`` per edge heavy enough to count. An edge found inside a cluster is cleared
for good.

Seeds: the voxels of one seed start as one cluster, which carries the seed id; two clusters with
different seed ids never merge. mwatershed adds a mutex edge per pair of seeds, processed before
every other edge: the same constraint, at one id per cluster instead of quadratic memory.

Memory beyond the input, per voxel: 2 bytes per repulsive channel (uint8 input; 4 for float32),
4 per attractive channel (the order), about 24 for the clusters and 8 for the labels returned.
"""

from __future__ import annotations

import numpy as np
from numba import njit

FLOAT_BUCKETS = 1 << 16
MAX_VOXELS = 2**32 - 2  # voxel indices are uint32


def weight_table() -> np.ndarray:
    """float32 ``(2, 256)`` weights of uint8 affinities, row 0 attractive, row 1 repulsive."""
    affinity = np.arange(256, dtype=np.float32) / np.float32(255.0)  # as inference.encoding.decode
    one = np.float32(1.0)
    return np.stack([one - (one - affinity), one - affinity])


@njit(cache=True)
def _weight(value, repulsive):
    one = np.float32(1.0)
    repulsion = one - np.float32(value)
    return repulsion if repulsive else one - repulsion


@njit(cache=True)
def _find(parent, node):
    while parent[node] != node:
        grand = parent[parent[node]]
        parent[node] = grand
        node = grand
    return np.int64(node)


@njit(cache=True)
def repulsive_keys(affinities, offsets, attractive, strides, keep, mask, keys):
    """Fills ``keys`` (N, 2 R), per voxel the key of each of its repulsive edges: column ``2 j``
    for the edge of channel ``attractive + j`` leaving it, ``2 j + 1`` for the one arriving.

    Keys grow with the weight and 0 means no edge (none there, masked out, or dropped by the
    ``strides`` grid of its first voxel or by ``keep``, (C - attractive, Z, Y, X) bool or empty):
    uint8 affinities ``a`` give ``255 - a`` (weight 0 never separates anything, like no edge);
    float32 ones give ``floor(w * 65534) + 1``, equal keys then resolved by the exact weight.
    """
    _, depth, height, width = affinities.shape
    quantised = keys.itemsize == 1
    for c in range(attractive, offsets.shape[0]):
        dz, dy, dx = offsets[c, 0], offsets[c, 1], offsets[c, 2]
        delta = (dz * height + dy) * width + dx
        leaving = 2 * (c - attractive)
        sz, sy, sx = (1, 1, 1) if keep.size > 0 else (strides[0], strides[1], strides[2])
        z0, y0, x0 = max(0, -dz), max(0, -dy), max(0, -dx)
        z0, y0, x0 = z0 + (-z0) % sz, y0 + (-y0) % sy, x0 + (-x0) % sx
        for z in range(z0, depth - max(0, dz), sz):
            for y in range(y0, height - max(0, dy), sy):
                for x in range(x0, width - max(0, dx), sx):
                    if keep.size > 0 and not keep[c - attractive, z, y, x]:
                        continue
                    if mask.size > 0 and not (mask[z, y, x] and mask[z + dz, y + dy, x + dx]):
                        continue
                    value = affinities[c, z, y, x]
                    if quantised:
                        key = 255 - np.int64(value)
                    else:
                        key = np.int64(np.float64(_weight(value, True)) * 65534.0) + 1
                    v = (z * height + y) * width + x
                    keys[v, leaving] = key
                    keys[v + delta, leaving + 1] = key


@njit(cache=True)
def sort_attractive(affinities, offsets, attractive, mask, table, counts, low, high, cursor, order):
    """Counts (``cursor`` empty) or places (``order[cursor[b, c]++] = v``) the attractive edges.

    ``table`` from :func:`weight_table` for uint8 affinities, empty for float32 (bucket =
    weight * (B - 1), B = ``counts.shape[0]``, and the lowest and highest weight per bucket).
    """
    _, depth, height, width = affinities.shape
    placing = cursor.size > 0
    scale = np.float64(counts.shape[0] - 1)
    for c in range(attractive):
        dz, dy, dx = offsets[c, 0], offsets[c, 1], offsets[c, 2]
        for z in range(max(0, -dz), depth - max(0, dz)):
            for y in range(max(0, -dy), height - max(0, dy)):
                for x in range(max(0, -dx), width - max(0, dx)):
                    if mask.size > 0 and not (mask[z, y, x] and mask[z + dz, y + dy, x + dx]):
                        continue
                    value = affinities[c, z, y, x]
                    if table.size > 0:
                        bucket = np.int64(value)
                        weight = table[0, bucket]
                    else:
                        weight = _weight(value, False)
                        bucket = np.int64(np.float64(weight) * scale)
                    if placing:
                        order[cursor[bucket, c]] = (z * height + y) * width + x
                        cursor[bucket, c] += 1
                    else:
                        counts[bucket, c] += 1
                        if table.size == 0:
                            low[bucket] = min(low[bucket], weight)
                            high[bucket] = max(high[bucket], weight)


@njit(cache=True)
def _block(size):
    """The block holding a cluster of ``size`` voxels: the smallest power of two not below it."""
    capacity = 1
    while capacity < size:
        capacity *= 2
    return capacity


@njit(cache=True)
def _pack(pool, parent, size, home, need):
    """The live blocks packed at the start of a pool with room for ``need`` more entries (the
    pool doubled while it would be more than half full). Returns (pool, top)."""
    live = need
    for root in range(parent.size):
        if home[root] >= 0 and parent[root] == root:
            live += _block(size[root])
    capacity = pool.size
    while 2 * live > capacity:
        capacity *= 2
    fresh = np.empty(capacity, dtype=pool.dtype)
    top = 0
    for root in range(parent.size):
        if home[root] >= 0 and parent[root] == root:
            first = home[root]
            fresh[top:top + size[root]] = pool[first:first + size[root]]
            home[root] = top
            top += _block(size[root])
    return fresh, top


@njit(cache=True)
def _absorb(pool, top, parent, size, home, big, small):
    """Merges the cluster rooted at ``small`` into the one at ``big``, its voxels appended to
    big's block (moved to a block twice as large when full). A single voxel has no block
    (``home`` -1): it is its own list. Returns (pool, top)."""
    joined = size[big] + size[small]
    if joined > _block(size[big]):
        capacity = _block(joined)
        if top + capacity > pool.size:
            pool, top = _pack(pool, parent, size, home, capacity)
        if home[big] >= 0:
            pool[top:top + size[big]] = pool[home[big]:home[big] + size[big]]
        else:
            pool[top] = big
        home[big] = top
        top += capacity
    target = home[big] + size[big]
    if home[small] >= 0:
        pool[target:target + size[small]] = pool[home[small]:home[small] + size[small]]
    else:
        pool[target] = small
    parent[small] = big
    size[big] = joined
    home[small] = -1
    return pool, top


@njit(cache=True)
def _leads_to(parent, own, other, v, flat, keys, threshold, exact, deltas, attractive, weight):
    """Whether a repulsive edge of voxel ``v`` (in the cluster rooted at ``own``) heavier than
    ``weight`` reaches the cluster rooted at ``other``: key above ``threshold``, or equal to it
    and (``exact``) a weight above ``weight``. An edge found inside ``own`` stays inside for
    good: its keys are cleared, so it is never looked at again."""
    for j in range(keys.shape[1] // 2):
        c = attractive + j
        key = np.int64(keys[v, 2 * j])
        if key > threshold or (exact and key == threshold and _weight(flat[c, v], True) > weight):
            root = _find(parent, v + deltas[c])
            if root == other:
                return True
            if root == own:
                keys[v, 2 * j] = 0
                keys[v + deltas[c], 2 * j + 1] = 0
        key = np.int64(keys[v, 2 * j + 1])
        if key > threshold or (exact and key == threshold and _weight(flat[c, v - deltas[c]], True) > weight):
            root = _find(parent, v - deltas[c])
            if root == other:
                return True
            if root == own:
                keys[v, 2 * j + 1] = 0
                keys[v - deltas[c], 2 * j] = 0
    return False


@njit(cache=True)
def cluster(flat, table, keys, thresholds, deltas, attractive, counts, starts, low, high, order, seeds, mask):
    """The greedy pass over the sorted attractive edges, then the labels.

    ``flat`` (C, N) affinities; ``table`` from :func:`weight_table` (uint8) or empty; ``keys``
    (N, 2 R) from :func:`repulsive_keys` (edges found inside a cluster are cleared);
    ``thresholds`` (256,): for uint8, the key a repulsive edge must exceed to weigh more than an
    attractive edge of each value; ``deltas[c]`` the flat offset of channel c; ``counts``,
    ``starts`` (buckets, attractive) and ``order`` from :func:`sort_attractive` (``order`` is
    rewritten inside buckets that need sorting); ``seeds`` (N,) uint32 ids (0 = none) or empty;
    ``mask`` (N,) bool or empty.

    Returns:
        (N,) uint64 labels, consecutive from 1 in order of first appearance; 0 where masked out.
    """
    voxels = flat.shape[1]
    quantised = table.size > 0
    parent = np.arange(voxels, dtype=np.uint32)
    size = np.ones(voxels, dtype=np.uint32)
    home = np.full(voxels, -1, dtype=np.int64)  # where a root's block of voxels starts in the pool
    pool = np.empty(max(1024, voxels), dtype=np.uint32)
    top = 0
    seeded = seeds.size > 0
    tag = np.zeros(voxels if seeded else 0, dtype=np.uint32)
    if seeded:
        first = np.full(np.int64(seeds.max()) + 1, -1, dtype=np.int64)
        for v in range(voxels):
            s = seeds[v]
            if s != 0:
                if first[s] < 0:
                    first[s] = v
                    tag[v] = s
                else:
                    pool, top = _absorb(pool, top, parent, size, home, first[s], v)
    for b in range(counts.shape[0] - 1, -1, -1):
        start = starts[b, 0]
        end = starts[b, attractive - 1] + counts[b, attractive - 1]
        if end == start:
            continue
        resort = not quantised and low[b] != high[b]
        channel = np.empty(0, dtype=np.int64)
        if resort:  # different weights share this bucket: order them, stably (ties by index)
            negated = np.empty(end - start, dtype=np.float32)
            channel = np.empty(end - start, dtype=np.int64)
            for c in range(attractive):
                for i in range(starts[b, c], starts[b, c] + counts[b, c]):
                    negated[i - start] = -_weight(flat[c, order[i]], False)
                    channel[i - start] = c
            permutation = np.argsort(negated, kind="mergesort")
            order[start:end] = order[start:end][permutation]
            channel = channel[permutation]
        c, segment_end = 0, starts[b, 0] + counts[b, 0]
        for i in range(start, end):
            if resort:
                c = channel[i - start]
            else:
                while i >= segment_end:
                    c += 1
                    segment_end = starts[b, c] + counts[b, c]
            u = np.int64(order[i])
            v = u + deltas[c]
            ru, rv = _find(parent, u), _find(parent, v)
            if ru == rv:
                continue
            if seeded and tag[ru] != 0 and tag[rv] != 0 and tag[ru] != tag[rv]:
                continue
            if size[ru] < size[rv]:
                small, big, inside = ru, rv, u
            else:
                small, big, inside = rv, ru, v
            if quantised:
                weight, threshold = table[0, np.int64(flat[c, u])], thresholds[np.int64(flat[c, u])]
            else:
                weight = _weight(flat[c, u], False)
                threshold = np.int64(np.float64(weight) * 65534.0) + 1
            # A separating edge most likely leaves one of this edge's ends; else scan the smaller side.
            if _leads_to(parent, small, big, inside, flat, keys, threshold, not quantised, deltas, attractive,
                         weight):
                continue
            separated = False
            if home[small] >= 0 and _leads_to(parent, big, small, v if inside == u else u, flat, keys, threshold,
                                              not quantised, deltas, attractive, weight):
                continue
            if home[small] >= 0:
                for k in range(home[small] + size[small] - 1, home[small] - 1, -1):
                    if _leads_to(parent, small, big, np.int64(pool[k]), flat, keys, threshold, not quantised, deltas,
                                 attractive, weight):
                        separated = True
                        break
            if separated:
                continue
            pool, top = _absorb(pool, top, parent, size, home, big, small)
            if seeded:
                tag[big] = max(tag[big], tag[small])
    labels = size  # reused: root -> label
    labels[:] = 0
    out = np.zeros(voxels, dtype=np.uint64)
    next_label = 1
    for v in range(voxels):
        if mask.size > 0 and not mask[v]:
            continue
        root = _find(parent, v)
        if labels[root] == 0:
            labels[root] = next_label
            next_label += 1
        out[v] = labels[root]
    return out


def mutex_watershed_grid(
    affinities: np.ndarray,
    offsets: np.ndarray,
    attractive: int,
    strides: tuple[int, int, int],
    keep: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    seeds: np.ndarray | None = None,
) -> np.ndarray:
    """The Mutex Watershed of checked inputs (see :func:`melecole.segment.mutex.mutex_watershed`).

    Args:
        affinities: C-contiguous ``(C, Z, Y, X)``, uint8 (affinity x 255) or float32 in [0, 1].
        offsets: ``(C, 3)`` integer offsets; channel ``c`` compares ``v`` with ``v + offsets[c]``.
        attractive: the first ``attractive`` channels attract, the others repel.
        strides: repulsive edges are kept at voxels on this ``(z, y, x)`` grid (unless ``keep``).
        keep: optional bool ``(C - attractive, Z, Y, X)``: which repulsive edges are kept.
        mask: optional bool ``(Z, Y, X)``; edges touching False voxels are ignored, they get 0.
        seeds: optional ``(Z, Y, X)`` uint32 seed ids, 0 = no seed.

    Returns:
        uint64 ``(Z, Y, X)`` labels, consecutive from 1 in order of first appearance.
    """
    channels, *shape = affinities.shape
    shape = tuple(int(s) for s in shape)
    voxels = int(np.prod(shape))
    if voxels > MAX_VOXELS:
        raise ValueError(f"affinities {affinities.shape}: at most {MAX_VOXELS} voxels")
    offsets = np.asarray(offsets, dtype=np.int64).reshape(channels, 3)
    quantised = affinities.dtype == np.uint8
    table = weight_table() if quantised else np.zeros((0, 0), dtype=np.float32)
    buckets = 256 if quantised else FLOAT_BUCKETS
    mask3 = np.zeros((0, 0, 0), dtype=bool) if mask is None else mask
    keep = np.zeros((0, 0, 0, 0), dtype=bool) if keep is None else keep
    keys = np.zeros((voxels, 2 * (channels - attractive)), dtype=np.uint8 if quantised else np.uint16)
    repulsive_keys(affinities, offsets, attractive, np.asarray(strides, dtype=np.int64), keep, mask3, keys)
    # uint8: a repulsive edge of key 255 - k weighs more than an attractive one of value a
    # exactly for k below the number of repulsive weights above the attractive weight.
    heavier = (table[1][None, :] > table[0][:, None]).sum(axis=1) if quantised else np.zeros(256, np.int64)
    thresholds = (255 - heavier).astype(np.int64)
    counts = np.zeros((buckets, attractive), dtype=np.int64)  # attractive edges per (bucket, channel)
    low = np.full(0 if quantised else buckets, np.inf, dtype=np.float32)
    high = np.full(low.size, -np.inf, dtype=np.float32)
    sort_attractive(affinities, offsets, attractive, mask3, table, counts, low, high,
                    np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.uint32))
    # Buckets from the highest weight down, each channel by channel: the order of processing.
    flipped = counts[::-1].ravel()
    starts = np.ascontiguousarray((np.cumsum(flipped) - flipped).reshape(counts.shape)[::-1])
    order = np.empty(int(counts.sum()), dtype=np.uint32)
    sort_attractive(affinities, offsets, attractive, mask3, table, counts, low, high, starts.copy(), order)
    deltas = offsets @ np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    labels = cluster(affinities.reshape(channels, voxels), table, keys, thresholds, deltas, attractive, counts,
                     starts, low, high, order,
                     np.zeros(0, dtype=np.uint32) if seeds is None else seeds.reshape(-1),
                     np.zeros(0, dtype=bool) if mask is None else mask.reshape(-1))
    return labels.reshape(shape)
