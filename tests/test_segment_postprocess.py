"""Small-segment merging and relabelling on hand-made volumes with exact expected outputs."""

from __future__ import annotations

import numpy as np
import pytest

from melecole.segment.postprocess import merge_small_segments, relabel_consecutive


def _vol(rows: list[list[int]]) -> np.ndarray:
    """A one-plane volume (1, Y, X)."""
    return np.asarray(rows, dtype=np.uint64)[None]


def test_relabel_consecutive_keeps_zero_and_order_of_appearance() -> None:
    seg = np.array([[[5, 0, 3, 3, 7]]], dtype=np.int32)
    before = seg.copy()
    out = relabel_consecutive(seg)
    np.testing.assert_array_equal(out, [[[1, 0, 2, 2, 3]]])
    assert out.dtype == np.uint64
    np.testing.assert_array_equal(seg, before)


def test_small_segment_joins_the_neighbour_with_most_contact() -> None:
    seg = _vol([
        [1, 1, 1, 2, 2, 2],
        [1, 1, 3, 3, 2, 2],
        [1, 1, 1, 1, 2, 2],
    ])  # segment 3 shares 4 faces with 1 and 2 with 2
    expected = _vol([
        [1, 1, 1, 2, 2, 2],
        [1, 1, 1, 1, 2, 2],
        [1, 1, 1, 1, 2, 2],
    ])
    out = merge_small_segments(seg, min_size=3)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint64


def test_contact_wins_over_neighbour_size() -> None:
    # Segment 3 is one voxel with five faces on the small segment 1 and one on the big segment 2.
    seg = np.full((3, 3, 5), 2, dtype=np.uint64)
    centre = (1, 1, 2)
    seg[centre] = 3
    for dz, dy, dx in [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1)]:
        seg[1 + dz, 1 + dy, 2 + dx] = 1
    out = merge_small_segments(seg, min_size=2)
    # 2 appears first, so it becomes 1; segment 1 (with 3 merged in) becomes 2.
    expected = np.where(seg == 2, 1, 2).astype(np.uint64)
    np.testing.assert_array_equal(out, expected)


def test_chain_of_small_segments_merges_over_rounds() -> None:
    # B (col 4) touches A once and C twice; C touches B twice and D once; D touches only C.
    seg = _vol([
        [1, 1, 1, 1, 2, 3, 0],
        [1, 1, 1, 0, 2, 3, 4],
    ])
    # min_size 5: B, C, D join each other in round one (size 5) and stop there.
    np.testing.assert_array_equal(
        merge_small_segments(seg, min_size=5),
        _vol([[1, 1, 1, 1, 2, 2, 0], [1, 1, 1, 0, 2, 2, 2]]),
    )
    # min_size 6: the group of 5 is still small, so a second round merges it into A.
    np.testing.assert_array_equal(
        merge_small_segments(seg, min_size=6),
        _vol([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 1, 1, 1]]),
    )


def test_background_never_absorbs_and_isolated_small_segments_stay() -> None:
    seg = _vol([
        [0, 0, 0, 1, 1, 1],
        [0, 2, 0, 1, 1, 1],
        [0, 2, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 0],
        [3, 0, 0, 0, 0, 0],
    ])
    expected = _vol([
        [0, 0, 0, 1, 1, 1],
        [0, 1, 0, 1, 1, 1],
        [0, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 0],
        [2, 0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(merge_small_segments(seg, min_size=3), expected)


def test_input_is_untouched_and_min_size_zero_only_relabels() -> None:
    seg = _vol([[7, 7, 0, 3], [9, 9, 9, 3]])
    before = seg.copy()
    for min_size in (0, 1):
        np.testing.assert_array_equal(merge_small_segments(seg, min_size), _vol([[1, 1, 0, 2], [3, 3, 3, 2]]))
    merge_small_segments(seg, 10)
    np.testing.assert_array_equal(seg, before)


def test_affinities_choose_the_neighbour_with_highest_mean_affinity() -> None:
    seg = _vol([
        [1, 1, 1, 2, 2, 2],
        [1, 1, 3, 3, 2, 2],
        [1, 1, 1, 1, 2, 2],
    ])  # by contact, segment 3 would join 1
    offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, 0, -2)]
    affs = np.full((4,) + seg.shape, 0.1, dtype=np.float32)
    for c, offset in enumerate(offsets[:3]):
        src = tuple(slice(max(0, -d), n - max(0, d)) for n, d in zip(seg.shape, offset))
        dst = tuple(slice(max(0, d), n - max(0, -d)) for n, d in zip(seg.shape, offset))
        across = ((seg[src] == 2) & (seg[dst] == 3)) | ((seg[src] == 3) & (seg[dst] == 2))
        affs[(c,) + src][across] = 0.9
    expected = _vol([
        [1, 1, 1, 2, 2, 2],
        [1, 1, 2, 2, 2, 2],
        [1, 1, 1, 1, 2, 2],
    ])
    np.testing.assert_array_equal(merge_small_segments(seg, 3, affinities=affs, offsets=offsets), expected)


def test_random_volume_properties() -> None:
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 60, size=(6, 10, 10)).astype(np.uint64)  # mostly tiny segments
    min_size = 12
    out = merge_small_segments(seg, min_size)
    # A coarsening: every input segment lies inside exactly one output segment; background kept.
    np.testing.assert_array_equal(out == 0, seg == 0)
    pairs = np.unique(np.stack([seg.ravel(), out.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]
    np.testing.assert_array_equal(np.unique(out), np.arange(0, out.max() + 1))
    # No small segment is left with a foreground neighbour.
    sizes = np.bincount(out.ravel())
    for axis in range(3):
        a = np.moveaxis(out, axis, 0)[:-1].ravel()
        b = np.moveaxis(out, axis, 0)[1:].ravel()
        touching = (a != b) & (a != 0) & (b != 0)
        assert np.all(sizes[a[touching]] >= min_size) and np.all(sizes[b[touching]] >= min_size)
    assert 1 < out.max() < len(np.unique(seg)) - 1


def test_affinities_without_offsets_are_rejected() -> None:
    seg = _vol([[1, 2]])
    with pytest.raises(ValueError, match="offsets"):
        merge_small_segments(seg, 2, affinities=np.ones((1, 1, 1, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(1, 1, 1, 3\)"):
        merge_small_segments(seg, 2, affinities=np.ones((1, 1, 1, 3), np.float32), offsets=[(0, 0, 1)])
