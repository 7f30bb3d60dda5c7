"""Boundary maps and per-patch connected-component instances."""

from __future__ import annotations

import re

import numpy as np
import pytest

from melecole.data.targets import boundary_map, patch_instances


def _row(values) -> np.ndarray:
    return np.array(values, dtype=np.uint32).reshape(1, 1, -1)


@pytest.mark.parametrize(
    "labels,expected",
    [
        # A label change marks both sides.
        ([1, 1, 2, 2, 2], [0, 1, 1, 0, 0]),
        # A 0 voxel is boundary, and so are its labelled neighbours (their label differs from 0).
        ([1, 1, 1, 0, 2, 2, 2, 2], [0, 0, 1, 1, 1, 0, 0, 0]),
        # One label everywhere: no boundary, the patch edge included.
        ([4, 4, 4, 4], [0, 0, 0, 0]),
        ([3, 5, 3], [1, 1, 1]),
        ([0, 0], [1, 1]),
    ],
)
def test_boundary_map_rows(labels, expected):
    result = boundary_map(_row(labels))
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, np.array(expected, dtype=np.float32).reshape(1, 1, -1))


def test_boundary_map_along_z_and_y():
    along_z = np.array([5, 5, 5, 6], dtype=np.int64).reshape(4, 1, 1)
    np.testing.assert_array_equal(boundary_map(along_z).ravel(), [0, 0, 1, 1])
    along_y = np.array([7, 8, 8, 8], dtype=np.int64).reshape(1, 4, 1)
    np.testing.assert_array_equal(boundary_map(along_y).ravel(), [1, 1, 0, 0])


def test_boundary_map_quadrants_use_face_neighbours_only():
    labels = np.array(
        [
            [1, 1, 1, 2, 2],
            [1, 1, 1, 2, 2],
            [1, 1, 1, 2, 2],
            [3, 3, 3, 3, 2],
            [3, 3, 3, 3, 2],
        ],
        dtype=np.uint64,
    )[None]
    expected = np.array(
        [
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 0, 0, 1, 1],
        ],
        dtype=np.float32,
    )[None]
    np.testing.assert_array_equal(boundary_map(labels), expected)


def test_boundary_map_two_sections():
    labels = np.array([[[1, 1], [1, 1]], [[1, 2], [1, 1]]], dtype=np.int32)  # (2, 2, 2)
    expected = np.array([[[0, 1], [0, 0]], [[1, 1], [0, 1]]], dtype=np.float32)
    np.testing.assert_array_equal(boundary_map(labels), expected)


def test_boundary_map_keeps_input_and_rejects_bad_arrays():
    labels = np.array([[[1, 0, 2]]], dtype=np.uint64)
    copy = labels.copy()
    boundary_map(labels)
    np.testing.assert_array_equal(labels, copy)
    with pytest.raises(ValueError, match=re.escape("(3, 4)")):
        boundary_map(np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="float"):
        boundary_map(np.zeros((1, 2, 2), dtype=np.float32))


def test_patch_instances_splits_a_u_cut_by_the_patch():
    # Label 7 is a U whose bottom row lies outside the patch; label 3 fills the inside of the U
    # and touches both arms; 0 separates the right arm from the border column.
    volume = np.array(
        [
            [7, 3, 3, 7, 0],
            [7, 3, 3, 7, 0],
            [7, 3, 3, 7, 0],
            [7, 3, 3, 7, 0],
            [7, 7, 7, 7, 0],
        ],
        dtype=np.uint64,
    )[None]
    patch = volume[:, :4]  # the bottom of the U is cut away
    before = patch.copy()
    result = patch_instances(patch)
    np.testing.assert_array_equal(patch, before)
    assert result.dtype == np.int64
    assert result.shape == patch.shape
    np.testing.assert_array_equal(result == 0, patch == 0)
    left, right, inside = result[0, 0, 0], result[0, 0, 3], result[0, 0, 1]
    assert len({left, right, inside}) == 3 and 0 not in {left, right, inside}
    assert (result[0, :, 0] == left).all() and (result[0, :, 3] == right).all()
    assert (result[0, :, 1:3] == inside).all()
    assert sorted(np.unique(result).tolist()) == sorted({0, int(left), int(right), int(inside)})
    # The whole U, bottom included, stays one instance.
    whole = patch_instances(volume)
    assert whole[0, 0, 0] == whole[0, 0, 3] == whole[0, 4, 2]


def test_patch_instances_uses_six_connectivity_in_3d():
    labels = np.zeros((2, 2, 2), dtype=np.int64)
    labels[0, 0, 0] = 4
    labels[1, 1, 1] = 4  # touches the first voxel only at a corner
    labels[1, 1, 0] = 9
    labels[1, 0, 0] = 9  # face neighbours across sections: one piece
    result = patch_instances(labels)
    assert result[0, 0, 0] != result[1, 1, 1]
    assert result[1, 1, 0] == result[1, 0, 0]
    assert len(np.unique(result[labels > 0])) == 3
    np.testing.assert_array_equal(result == 0, labels == 0)


def test_patch_instances_each_piece_within_one_label():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(4, 6, 6)).astype(np.uint32) * 1_000_003
    result = patch_instances(labels)
    np.testing.assert_array_equal(result == 0, labels == 0)
    for piece in np.unique(result[result > 0]):
        assert len(np.unique(labels[result == piece])) == 1
    with pytest.raises(ValueError, match=re.escape("(6, 6)")):
        patch_instances(labels[0])


# --- boundary width, affinities, balancing weights ---------------------------------------------

from melecole.data.targets import affinities, balance_weights  # noqa: E402


@pytest.mark.parametrize(
    "labels,width,expected",
    [
        ([1, 1, 1, 1, 2, 2, 2, 2], 1, [0, 0, 0, 1, 1, 0, 0, 0]),
        ([1, 1, 1, 1, 2, 2, 2, 2], 2, [0, 0, 1, 1, 1, 1, 0, 0]),
        ([1, 1, 1, 1, 2, 2, 2, 2], 3, [0, 1, 1, 1, 1, 1, 1, 0]),
        # The patch edge is not a boundary at any width.
        ([5, 5, 5, 5, 5], 3, [0, 0, 0, 0, 0]),
        ([1, 1, 1, 1, 0, 3, 3, 3, 3], 2, [0, 0, 1, 1, 1, 1, 1, 0, 0]),
    ],
)
def test_boundary_map_width_rows(labels, width, expected):
    np.testing.assert_array_equal(boundary_map(_row(labels), width).ravel(), expected)


def test_boundary_map_width_uses_city_block_distance():
    labels = np.ones((1, 7, 7), dtype=np.uint64)
    labels[0, 3, 3] = 2  # a one-voxel cell in the middle
    result = boundary_map(labels, width=2)[0]
    distance = np.abs(np.arange(7)[:, None] - 3) + np.abs(np.arange(7)[None, :] - 3)
    np.testing.assert_array_equal(result, (distance <= 2).astype(np.float32))
    with pytest.raises(ValueError, match="width"):
        boundary_map(labels, width=0)


def test_affinities_table_along_x():
    labels = _row([1, 1, 2, 2, 0, 0])
    affs, mask = affinities(labels, [(0, 0, 1), (0, 0, -1), (0, 0, 2)])
    assert affs.shape == mask.shape == (3, 1, 1, 6) and affs.dtype == mask.dtype == np.float32
    # v compared with v + o: equal and non-zero labels -> 1; neighbour outside the patch -> masked.
    np.testing.assert_array_equal(affs[0].ravel(), [1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(mask[0].ravel(), [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(affs[1].ravel(), [0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(mask[1].ravel(), [0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(affs[2].ravel(), [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(mask[2].ravel(), [1, 1, 1, 1, 0, 0])


def test_affinities_any_offset_agree_with_a_direct_comparison():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (5, 6, 7)).astype(np.uint64)
    offsets = [(-1, 0, 0), (0, -3, 0), (2, -1, 4), (0, 0, -9)]
    affs, mask = affinities(labels, offsets)
    for channel, offset in enumerate(offsets):
        for v in np.ndindex(labels.shape):
            u = tuple(a + o for a, o in zip(v, offset))
            inside = all(0 <= c < n for c, n in zip(u, labels.shape))
            assert mask[channel][v] == inside
            assert affs[channel][v] == (inside and labels[v] != 0 and labels[v] == labels[u])
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        affinities(labels, [(1, 2)])


def test_balance_weights_give_both_classes_equal_total():
    target = np.zeros((4, 5, 5), np.float32)
    target[:, :, :1] = 1  # 20 % positives
    weights = balance_weights(target)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights[target == 1].sum(), weights[target == 0].sum())
    np.testing.assert_allclose(weights.mean(), 1.0)
    np.testing.assert_allclose(weights[target == 1], 2.5)
    mask = np.ones_like(target)
    mask[0] = 0
    masked = balance_weights(target, mask)
    assert not masked[0].any()
    np.testing.assert_allclose(masked[mask > 0].mean(), 1.0)
    np.testing.assert_array_equal(balance_weights(np.zeros((2, 2, 2))), np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(4, 5, 5\).*\(2, 2, 2\)"):
        balance_weights(target, np.ones((2, 2, 2)))
