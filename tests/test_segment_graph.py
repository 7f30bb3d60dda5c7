"""Region graphs of fragments: brute-force sums, blocks = whole volume, waterz's agglomeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from melecole.evaluate import variation_of_information
from melecole.segment.agglomerate import _quiet_stdout, agglomerate
from melecole.segment.graph import (
    Graph,
    agglomerate_graph,
    block_fragments,
    fragment_graph,
    merge_graphs,
    relabel_graph,
    segment_via_graph,
)
from melecole.segment.postprocess import merge_small_on_graph, merge_small_segments

BIG = np.uint64(2**62)  # ids this large must work: blockwise ids carry a per-block offset


def _affinities_of(labels: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """(3, Z, Y, X): 1 between same-label neighbours, 0 across labels, plus smooth noise."""
    affinities = np.zeros((3,) + labels.shape, dtype=np.float32)
    for axis in range(3):
        here = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        before = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        affinities[(axis, *here)] = labels[here] == labels[before]
    smooth = ndimage.gaussian_filter(rng.normal(size=affinities.shape), (0, 1.5, 1.5, 1.5))
    smooth /= smooth.std()
    return np.clip(affinities + noise * (smooth - 0.5), 0, 1).astype(np.float32)


def _voronoi(seed: int, shape=(32, 32, 32), n_objects: int = 12, noise: float = 0.25):
    """Touching random blobs (a Voronoi of random seeds) and their noisy affinities."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, shape[0], size=(n_objects, 3))
    grid = np.indices(shape).reshape(3, -1).T  # (Z*Y*X, 3)
    labels = (((grid[:, None] - seeds[None]) ** 2).sum(-1).argmin(1) + 1).reshape(shape)
    return labels, _affinities_of(labels, rng, noise)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b group the voxels alike, whatever their ids (a one-to-one contingency)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _segmentation(fragments: np.ndarray, ids: np.ndarray, segments: np.ndarray) -> np.ndarray:
    out = np.zeros(fragments.shape, dtype=np.uint64)
    inside = fragments != 0
    out[inside] = segments[np.searchsorted(ids, fragments[inside])]
    return out


def _lower_halo(block: tuple[slice, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The block grown by one voxel at its lower faces, and the block inside that."""
    grown = tuple(slice(max(s.start - 1, 0), s.stop) for s in block)
    return grown, tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(block, grown))


def _grid(shape, block_shape) -> list[tuple[slice, ...]]:
    starts = [range(0, n, b) for n, b in zip(shape, block_shape)]
    return [tuple(slice(s, min(s + b, n)) for s, b, n in zip(corner, block_shape, shape))
            for corner in itertools.product(*starts)]


def test_fragment_graph_equals_a_brute_force_loop() -> None:
    rng = np.random.default_rng(3)
    fragments = rng.integers(0, 6, size=(5, 6, 7)).astype(np.uint64)
    fragments[fragments != 0] += BIG
    affinities = rng.random((3, 5, 6, 7)).astype(np.float32)
    region = (slice(1, 5), slice(2, 6), slice(0, 7))
    before = fragments.copy(), affinities.copy()
    expected: dict[tuple[int, int], list[float]] = {}
    for z, y, x in itertools.product(*(range(s.start, s.stop) for s in region)):
        for c, (dz, dy, dx) in enumerate([(-1, 0, 0), (0, -1, 0), (0, 0, -1)]):
            pz, py, px = z + dz, y + dy, x + dx
            if min(pz, py, px) < 0:
                continue
            u, v = int(fragments[z, y, x]), int(fragments[pz, py, px])
            if u != v and u and v:
                entry = expected.setdefault((min(u, v), max(u, v)), [0.0, 0])
                entry[0] += float(affinities[c, z, y, x])
                entry[1] += 1
    graph = fragment_graph(fragments, affinities, region)
    assert sorted(expected) == list(zip(graph.lo.tolist(), graph.hi.tolist()))
    np.testing.assert_allclose(graph.total, [expected[k][0] for k in sorted(expected)], rtol=1e-12)
    np.testing.assert_array_equal(graph.count, [expected[k][1] for k in sorted(expected)])
    inside = fragments[region]
    ids, sizes = np.unique(inside[inside != 0], return_counts=True)
    np.testing.assert_array_equal(graph.ids, ids)
    np.testing.assert_array_equal(graph.sizes, sizes)
    assert graph.lo.dtype == graph.ids.dtype == np.uint64
    np.testing.assert_array_equal(fragments, before[0])
    np.testing.assert_array_equal(affinities, before[1])


@pytest.mark.parametrize("block_shape", [(16, 16, 16), (11, 13, 32)])
def test_block_graphs_merge_into_the_whole_volume_graph(block_shape) -> None:
    _, affinities = _voronoi(seed=1)
    # Multiples of 1/1024 add up exactly in any order, so the sums can be compared exactly.
    affinities = np.round(affinities * 1024) / 1024
    fragments = block_fragments(affinities)
    fragments[fragments != 0] += BIG
    whole = fragment_graph(fragments, affinities)
    blocks = _grid(fragments.shape, block_shape)
    parts = []
    for block in blocks:
        grown, inside = _lower_halo(block)
        parts.append(fragment_graph(fragments[grown], affinities[(slice(None), *grown)], inside))
    merged = merge_graphs(parts)
    for field in ("lo", "hi", "total", "count", "ids", "sizes"):
        np.testing.assert_array_equal(getattr(merged, field), getattr(whole, field), err_msg=field)


def test_fragment_graph_is_waterz_region_graph() -> None:
    _, affinities = _voronoi(seed=0)
    import waterz

    with _quiet_stdout():
        fragments, edges = next(waterz.agglomerate(affinities, [0.0], return_region_graph=True))
        fragments = np.array(fragments, copy=True)
    ours = block_fragments(affinities)
    np.testing.assert_array_equal(ours, fragments)  # the same fragments, even the same ids
    graph = fragment_graph(ours, affinities)
    theirs = sorted((e["u"], e["v"], e["score"]) for e in edges)
    assert [(u, v) for u, v, _ in theirs] == list(zip(graph.lo.tolist(), graph.hi.tolist()))
    np.testing.assert_allclose(1 - graph.total / graph.count, [s for _, _, s in theirs], atol=1e-5)


@pytest.mark.parametrize("seed", [0, 2])
def test_agglomerate_graph_reproduces_waterz(seed) -> None:
    _, affinities = _voronoi(seed=seed, noise=0.3)
    fragments = block_fragments(affinities)
    graph = fragment_graph(fragments, affinities)
    thresholds = [0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95]
    counts = []
    for threshold, expected in zip(thresholds, agglomerate(affinities, thresholds)):
        ids, segments = agglomerate_graph(graph, threshold)
        ours = _segmentation(fragments, ids, segments)
        assert _same_partition(ours, expected), threshold
        counts.append(int(segments.max()))
    assert counts == sorted(counts, reverse=True) and counts[0] > 1000 and counts[-1] < 20


def _hand_graph(edges, ids, sizes=None) -> Graph:
    lo, hi, total, count = (np.array(column) for column in zip(*edges))
    ids = np.array(ids, dtype=np.uint64)
    return merge_graphs([Graph(lo.astype(np.uint64), hi.astype(np.uint64), total.astype(np.float64),
                               count.astype(np.int64), ids, np.ones(len(ids), np.int64) if sizes is None
                               else np.array(sizes, np.int64))])


# A-B: score 1 - 7/8 = 0.125. B-C: 1 - 3/4 = 0.25. A-C: 1 - 0/4 = 1. Once A and B merge, their
# edges to C are one, score 1 - 3/8 = 0.625: C stays apart up to there, though B-C alone is 0.25.
A, B, C, D = (BIG + np.uint64(k) for k in (7, 3, 9, 2**61))
TRIANGLE = [(A, B, 7.0, 8), (B, C, 3.0, 4), (A, C, 0.0, 4)]


@pytest.mark.parametrize("threshold, expected", [
    (0.125, [1, 2, 3, 4]),  # strict: a score equal to the threshold does not merge
    (0.126, [1, 1, 2, 3]),  # ids sorted: B, A, C, D; A-B merges; segments numbered by lowest id
    (0.5, [1, 1, 2, 3]),  # B-C alone (0.25) would merge C: combined with A-C it is 0.625
    (0.625, [1, 1, 2, 3]),
    (0.7, [1, 1, 1, 2]),  # D has no edge and stays alone
])
def test_agglomerate_graph_by_hand(threshold, expected) -> None:
    ids, segments = agglomerate_graph(_hand_graph(TRIANGLE, [A, B, C, D]), threshold)
    np.testing.assert_array_equal(ids, np.sort([A, B, C, D]))
    np.testing.assert_array_equal(segments, expected)
    assert segments.dtype == np.uint64


def test_merge_graphs_sums_pairs_and_sizes_of_ids_near_two_to_the_63() -> None:
    top = np.uint64(2**63 + 5)
    first = _hand_graph([(top, BIG, 0.5, 1), (BIG, BIG + np.uint64(1), 1.0, 2)], [top, BIG], [3, 4])
    second = _hand_graph([(BIG, top, 0.25, 2)], [top], [6])
    merged = merge_graphs([first, second])
    np.testing.assert_array_equal(merged.lo, [BIG, BIG])
    np.testing.assert_array_equal(merged.hi, [BIG + np.uint64(1), top])
    np.testing.assert_array_equal(merged.total, [1.0, 0.75])
    np.testing.assert_array_equal(merged.count, [2, 3])
    np.testing.assert_array_equal(merged.ids, [BIG, top])
    np.testing.assert_array_equal(merged.sizes, [4, 9])
    empty = merge_graphs([])
    assert len(empty.lo) == len(empty.ids) == 0


def test_relabel_graph_sums_edges_between_groups() -> None:
    graph = _hand_graph(TRIANGLE, [A, B, C], [2, 3, 4])
    grouped = relabel_graph(graph, np.array([A, B, C]), np.array([5, 5, 1], np.uint64))
    np.testing.assert_array_equal(grouped.lo, [1])
    np.testing.assert_array_equal(grouped.hi, [5])
    np.testing.assert_array_equal(grouped.total, [3.0])
    np.testing.assert_array_equal(grouped.count, [8])
    np.testing.assert_array_equal(grouped.ids, [1, 5])
    np.testing.assert_array_equal(grouped.sizes, [4, 5])
    with pytest.raises(ValueError, match=r"\(2,\)"):
        relabel_graph(graph, np.array([A, B]), np.array([1, 2], np.uint64))


def test_block_fragments_split_a_fragment_cut_by_the_write_region() -> None:
    # One U-shaped object (affinity 1 inside it, 0 elsewhere) is one watershed fragment.
    mask = np.zeros((1, 5, 5), bool)
    mask[0, :, 0] = mask[0, :, 4] = mask[0, 4, :] = True
    affinities = np.zeros((3,) + mask.shape, np.float32)
    for axis in (1, 2):
        here = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        before = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        affinities[(axis, *here)] = mask[here] & mask[before]
    before = affinities.copy()
    whole = block_fragments(affinities)
    np.testing.assert_array_equal(whole, mask.astype(np.uint64))  # the rest has no affinity: background
    cut = block_fragments(affinities, (slice(None), slice(0, 4), slice(None)))  # the bottom is cut off
    np.testing.assert_array_equal(cut[0], [[1, 0, 0, 0, 2]] * 4)
    assert cut.dtype == np.uint64
    np.testing.assert_array_equal(affinities, before)
    with pytest.raises(ValueError, match=r"\(2, 1, 5, 5\)"):
        block_fragments(affinities[:2])


def test_fragment_graph_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3, 4, 4, 4\).*\(4, 4, 5\)"):
        fragment_graph(np.ones((4, 4, 5), np.uint64), np.ones((3, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="three slices"):
        fragment_graph(np.ones((4, 4, 4), np.uint64), np.ones((3, 4, 4, 4), np.float32), (slice(0, 2),))


@pytest.mark.parametrize("min_size", [0, 20, 200])
def test_segment_via_graph_with_one_block_is_the_whole_volume_path(min_size) -> None:
    _, affinities = _voronoi(seed=0)
    expected = merge_small_segments(agglomerate(affinities, [0.5])[0], min_size)
    np.testing.assert_array_equal(segment_via_graph(affinities, 0.5, min_size), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_segment_via_graph_with_eight_blocks_stays_close_to_one_block(seed) -> None:
    labels, affinities = _voronoi(seed=seed)
    one = segment_via_graph(affinities, 0.5, 20)
    eight = segment_via_graph(affinities, 0.5, 20, block_shape=(16, 16, 16))
    split, merge = variation_of_information(eight, one, ignore_gt=())
    assert split + merge < 0.05
    # Meaningful: hundreds of fragments cross the block faces, and the result is a good one.
    fragments = block_fragments(affinities)
    crossing = set()
    for axis in range(3):
        lower, upper = np.take(fragments, 15, axis), np.take(fragments, 16, axis)
        crossing |= set(lower[lower == upper].tolist())
    assert len(crossing) > 300
    assert sum(variation_of_information(one, labels)) < 0.15


def test_an_object_across_eight_blocks_keeps_one_id() -> None:
    shape = (32, 32, 32)
    rng = np.random.default_rng(5)
    grid = np.indices(shape).reshape(3, -1).T
    seeds = np.array([[2, 2, 2], [2, 29, 29], [29, 2, 29], [29, 29, 2], [29, 29, 29]])
    labels = (((grid[:, None] - seeds[None]) ** 2).sum(-1).argmin(1) + 2).reshape(shape)
    ball = ((np.indices(shape) - 15.5) ** 2).sum(0) < 10**2  # centred on the corner of 8 blocks
    labels[ball] = 1
    affinities = _affinities_of(labels, rng, noise=0.25)
    one = segment_via_graph(affinities, 0.5, 20)
    eight = segment_via_graph(affinities, 0.5, 20, block_shape=(16, 16, 16))
    for result in (one, eight):
        inside = np.unique(result[ball])
        assert len(inside) == 1 and not np.any(result[~ball] == inside[0])
    assert len(np.unique(block_fragments(affinities)[ball])) > 8  # the ball is many fragments


@pytest.mark.parametrize("edges, ids, sizes, min_size, use_affinity, expected", [
    # 30 shares 4 faces with 10 and 2 with 20: it joins 10.
    ([(10, 30, 4, 4), (20, 30, 2, 2)], [10, 20, 30], [50, 50, 2], 3, False, [10, 20, 10]),
    # A tie goes to the lower id.
    ([(30, 20, 2, 2), (10, 30, 2, 2)], [10, 20, 30], [50, 50, 2], 3, False, [10, 20, 10]),
    # By affinity: 20's mean 0.9 over 1 face beats 10's 0.5 over 4.
    ([(10, 30, 2.0, 4), (20, 30, 0.9, 1)], [10, 20, 30], [50, 50, 2], 3, True, [10, 20, 20]),
    # Duplicate pairs add up: 10 has 1 + 1 faces with 30, 5 only 1.
    ([(30, 10, 1, 1), (10, 30, 1, 1), (5, 30, 1, 1)], [5, 10, 30], [50, 50, 2], 3, False, [5, 10, 10]),
    # A chain 5 - 7 = 9 - 11 (double bars: 2 faces): 7, 9 and 11 join at once, a group of 5 voxels...
    ([(5, 7, 1, 1), (7, 9, 2, 2), (9, 11, 1, 1)], [5, 7, 9, 11], [7, 2, 2, 1], 5, False, [5, 7, 7, 7]),
    # ...which is still small at min_size 6, so a second round merges it into 5.
    ([(5, 7, 1, 1), (7, 9, 2, 2), (9, 11, 1, 1)], [5, 7, 9, 11], [7, 2, 2, 1], 6, False, [5, 5, 5, 5]),
    # Ids in any order and near 2**63; a small node without neighbours stays.
    ([(2**63 + 9, 2**63 + 1, 3, 3)], [2**63 + 9, 4, 2**63 + 1], [2, 1, 40], 5, False, [2**63 + 1, 4, 2**63 + 1]),
    # min_size 0 or 1 merges nothing.
    ([(10, 30, 4, 4)], [10, 30], [50, 2], 1, False, [10, 30]),
])
def test_merge_small_on_graph_by_hand(edges, ids, sizes, min_size, use_affinity, expected) -> None:
    lo, hi, total, count = (np.array(column) for column in zip(*edges))
    group = merge_small_on_graph(lo.astype(np.uint64), hi.astype(np.uint64), total, count,
                                 np.array(ids, np.uint64), np.array(sizes), min_size, use_affinity)
    np.testing.assert_array_equal(group, np.array(expected, np.uint64))
    assert group.dtype == np.uint64


def test_merge_small_on_graph_rejects_unknown_and_repeated_ids() -> None:
    one = np.ones(1)
    with pytest.raises(ValueError, match="missing"):
        merge_small_on_graph(np.array([1], np.uint64), np.array([7], np.uint64), one, one,
                             np.array([1, 2], np.uint64), np.array([5, 5]), 3)
    with pytest.raises(ValueError, match="distinct"):
        merge_small_on_graph(np.array([1], np.uint64), np.array([2], np.uint64), one, one,
                             np.array([1, 2, 2], np.uint64), np.array([5, 5, 5]), 3)


def test_threshold_is_compared_in_float32_as_waterz_does() -> None:
    # Two fragments (x 0-1 and x 2-3) joined by one affinity 0.7: score 1 - float32(0.7), which
    # is float32(0.3) exactly. Just above it in float64 is still float32(0.3): no merge.
    affinities = np.zeros((3, 1, 1, 4), np.float32)
    affinities[2, 0, 0, 1:] = [1.0, 0.7, 1.0]
    fragments = block_fragments(affinities)
    np.testing.assert_array_equal(fragments[0, 0], [1, 1, 2, 2])
    graph = fragment_graph(fragments, affinities)
    for threshold, merged in [(float(np.float32(0.3)) + 1e-10, False), (0.3000001, True)]:
        waterz_segments = len(np.unique(agglomerate(affinities, [threshold])[0]))
        assert (waterz_segments == 1) == merged, threshold
        assert (agglomerate_graph(graph, threshold)[1].max() == 1) == merged, threshold
