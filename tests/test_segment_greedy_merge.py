"""The compiled greedy merge against its plain-Python reference, and its hash table against a dict."""

from __future__ import annotations

import numpy as np
import pytest

from melecole.segment.greedy_merge import (
    _delete,
    _find,
    _put,
    _table,
    merge_greedily,
    merge_greedily_python,
    merge_in_place,
)


def _lattice(side: int, rng: np.random.Generator, levels: int | None = None):
    """A side**3 grid of nodes with an edge to each face neighbour; ``levels`` quantises the
    mean affinities (many equal scores: the tie rules decide)."""
    index = np.arange(side**3).reshape(side, side, side)
    u = np.concatenate([np.moveaxis(index, axis, 0)[:-1].ravel() for axis in range(3)])
    v = np.concatenate([np.moveaxis(index, axis, 0)[1:].ravel() for axis in range(3)])
    count = rng.integers(1, 20, len(u)).astype(np.float64)
    mean = rng.random(len(u))
    if levels is not None:
        count[:] = rng.integers(1, 3, len(u))
        mean = np.round(mean * levels) / levels
    order = rng.permutation(len(u))  # edges in no particular order
    return u[order], v[order], mean[order] * count[order], count[order], side**3


@pytest.mark.parametrize("levels", [None, 3])
@pytest.mark.parametrize("seed", range(4))
def test_compiled_merge_equals_the_python_reference(seed, levels) -> None:
    rng = np.random.default_rng(seed)
    u, v, total, count, n = _lattice(7, rng, levels)
    for limit in (0.0, 0.3, 0.5, 0.8, 1.01):
        expected = merge_greedily_python(u, v, total, count, n, limit)
        np.testing.assert_array_equal(merge_greedily(u, v, total, count, n, limit), expected, err_msg=f"limit {limit}")


def test_merge_takes_the_cheapest_edge_and_rescores_merged_pairs() -> None:
    # 0-1 score 0.125 merges first; then {0, 1}-2 has sums 3 + 0 over 4 + 4: score 0.625.
    u, v = np.array([0, 1, 0]), np.array([1, 2, 2])
    total, count = np.array([7.0, 3.0, 0.0]), np.array([8.0, 4.0, 4.0])
    for limit, groups in ((0.1, 3), (0.3, 2), (0.6, 2), (0.7, 1)):
        roots = merge_greedily(u, v, total, count, 4, limit)
        assert len(np.unique(roots[:3])) == groups, limit
        assert roots[3] == 3  # a node without edges stays alone


def test_inputs_are_not_modified_unless_allowed() -> None:
    rng = np.random.default_rng(5)
    u, v, total, count, n = _lattice(4, rng)
    copies = [a.copy() for a in (u, v, total, count)]
    merge_greedily(u, v, total, count, n, 0.6)
    for before, after in zip(copies, (u, v, total, count)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("bad", ["self-edge", "out of range", "shapes"])
def test_bad_graphs_are_refused(bad) -> None:
    u, v, total, count = np.array([0, 1]), np.array([1, 2]), np.ones(2), np.ones(2)
    if bad == "self-edge":
        v = np.array([1, 1])
    elif bad == "out of range":
        v = np.array([1, 3])
    else:
        total = np.ones(3)
    with pytest.raises(ValueError):
        merge_greedily(u, v, total, count, 3, 0.5)


def test_merge_in_place_leaves_the_graph_between_regions() -> None:
    rng = np.random.default_rng(3)
    u, v, total, count, n = _lattice(5, rng)
    roots = merge_greedily(u, v, total, count, n, 0.55)
    ends_u, ends_v, sums, counts = u.copy(), v.copy(), total.copy(), count.copy()
    in_place, alive = merge_in_place(ends_u, ends_v, sums, counts, n, 0.55)
    np.testing.assert_array_equal(in_place, roots)
    # The reference: every original edge between two different regions, summed per pair of roots.
    between = roots[u] != roots[v]
    pairs = np.sort(np.stack([roots[u][between], roots[v][between]]), axis=0)
    keys, inverse = np.unique(pairs[0] * n + pairs[1], return_inverse=True)
    live = np.sort(np.stack([ends_u[alive], ends_v[alive]]), axis=0)
    order = np.argsort(live[0] * n + live[1])
    np.testing.assert_array_equal((live[0] * n + live[1])[order], keys)
    np.testing.assert_allclose(sums[alive][order], np.bincount(inverse, weights=total[between]))
    np.testing.assert_array_equal(counts[alive][order], np.bincount(inverse, weights=count[between]))


def test_merge_in_place_refuses_arrays_it_cannot_overwrite() -> None:
    u, v, total, count = np.array([0]), np.array([1]), np.ones(1), np.ones(1)
    with pytest.raises(ValueError, match="count"):
        merge_in_place(u, v, total, count.astype(np.int64), 2, 0.5)


def test_hash_table_agrees_with_a_dict_through_inserts_and_deletes() -> None:
    # A small table with many collisions: deletion must move back the entries probed past the
    # hole. Entry e stands for the pair (ends_u[e], ends_v[e]), as in the merge.
    rng = np.random.default_rng(0)
    n = 20
    ends_u, ends_v = np.divmod(np.arange(n * n, dtype=np.int64), n)
    slots = _table(48)
    reference: set[int] = set()
    for step in range(5000):
        edge = int(rng.integers(0, n * n))
        key = int(ends_u[edge]) * n + int(ends_v[edge])
        if ends_u[edge] > ends_v[edge]:
            continue  # keys are (min, max) pairs
        slot = _find(slots, key, ends_u, ends_v, n)
        assert (slot >= 0) == (edge in reference), step
        if slot >= 0:
            assert slots[slot] == edge
            _delete(slots, slot, ends_u, ends_v, n)
            reference.discard(edge)
        elif len(reference) < 48:
            _put(slots, key, edge)
            reference.add(edge)
    assert sorted(int(e) for e in slots[slots >= 0]) == sorted(reference)
