"""Geometric augmentations: exact index maps, warps that never pad, labels never invented."""

from __future__ import annotations

import numpy as np
import pytest

from melecole.data.augment import geometric
from melecole.data.augment.defects import misalign, misalignment_shifts


def _coded(shape):
    # Each voxel's label encodes its position: id = z * 10^6 + y * 10^3 + x + 1.
    z, y, x = np.indices(shape)
    labels = (z * 1_000_000 + y * 1_000 + x + 1).astype(np.uint64)
    return labels.astype(np.float32), labels


def _decode(labels):
    ids = labels.astype(np.int64) - 1
    return ids // 1_000_000, (ids // 1_000) % 1_000, ids % 1_000


def _assert_subset(out, region):
    assert np.isin(out, region).all()


def test_transpose_flip_rotate_are_exact_index_maps():
    raw, labels = _coded((4, 5, 6))
    t_raw, t_labels = geometric.transpose(raw, labels, (2, 0, 1))
    assert t_labels.shape == (6, 4, 5)
    assert t_labels[3, 1, 2] == labels[1, 2, 3]
    f_raw, f_labels = geometric.flip(raw, labels, (0, 2))
    assert f_labels[0, 1, 0] == labels[3, 1, 5]
    r_raw, r_labels = geometric.rotate90(raw, labels, 1)
    assert r_labels.shape == (4, 6, 5)
    # A quarter turn maps (y, x) to (X - 1 - x, y); z is untouched.
    assert r_labels[2, 6 - 1 - 4, 1] == labels[2, 1, 4]
    back = geometric.rotate90(r_raw, r_labels, 3)[1]
    np.testing.assert_array_equal(back, labels)
    for out_raw, out_labels in ((t_raw, t_labels), (f_raw, f_labels), (r_raw, r_labels)):
        np.testing.assert_array_equal(out_raw.astype(np.uint64), out_labels)
    with pytest.raises(ValueError, match=r"\(0, 0, 1\)"):
        geometric.transpose(raw, labels, (0, 0, 1))


@pytest.mark.parametrize("anisotropic,expected", [(False, 6), (True, 2)])
def test_flip_transpose_draws_the_allowed_orders(anisotropic, expected):
    raw, labels = _coded((8, 8, 8))
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(80):
        out_raw, out_labels = geometric.flip_transpose(raw, labels, rng, (8, 8, 8), anisotropic=anisotropic)
        np.testing.assert_array_equal(out_raw.astype(np.uint64), out_labels)
        source = _decode(out_labels)
        # The source axis whose coordinate changes along each output axis.
        steps = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
        orders.add(tuple(next(a for a in range(3) if source[a][step] != source[a][0, 0, 0]) for step in steps))
    assert len(orders) == expected
    assert {order[0] for order in orders} == ({0} if anisotropic else {0, 1, 2})


def test_flip_transpose_only_uses_orders_that_hold_the_patch():
    raw, labels = _coded((6, 20, 30))
    rng = np.random.default_rng(1)
    for _ in range(30):
        out = geometric.flip_transpose(raw, labels, rng, (5, 18, 25))[1]
        assert all(o >= p for o, p in zip(out.shape, (5, 18, 25)))
    with pytest.raises(ValueError, match=r"region \(6, 20, 30\).*\(25, 25, 25\)"):
        geometric.flip_transpose(raw, labels, rng, (25, 25, 25))


def test_random_rotate90_falls_back_to_a_half_turn_when_a_quarter_does_not_fit():
    raw, labels = _coded((2, 4, 9))
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = geometric.random_rotate90(raw, labels, rng, (2, 4, 9))[1]
        assert out.shape == (2, 4, 9)
        np.testing.assert_array_equal(out, labels[:, ::-1, ::-1])


def test_warp_without_transform_is_the_central_crop():
    raw, labels = _coded((12, 14, 16))
    out_raw, out_labels = geometric.warp(raw, labels, (8, 8, 8))
    np.testing.assert_array_equal(out_labels, labels[2:10, 3:11, 4:12])
    assert out_raw.dtype == np.float32 and out_labels.dtype == np.uint64


def test_warp_with_a_constant_displacement_is_an_exact_shift():
    raw, labels = _coded((12, 12, 12))
    field = np.zeros((3, 8, 8, 8))
    field[0], field[2] = 2, -2  # the region's 2-voxel margin exactly: nothing is shrunk
    out_raw, out_labels = geometric.warp(raw, labels, (8, 8, 8), displacement=field)
    np.testing.assert_array_equal(out_labels, labels[4:12, 2:10, 0:8])
    np.testing.assert_allclose(out_raw, labels[4:12, 2:10, 0:8].astype(np.float32))


def test_warp_beyond_the_margin_shrinks_and_never_pads():
    rng = np.random.default_rng(3)
    labels = rng.integers(1, 50, (10, 10, 10)).astype(np.uint64)
    raw = rng.uniform(1, 2, (10, 10, 10)).astype(np.float32)
    field = rng.uniform(-6, 6, (3, 8, 8, 8))
    out_raw, out_labels = geometric.warp(raw, labels, (8, 8, 8), zoom=(0.3, 0.5, 2.0), displacement=field)
    # Constant or reflected padding would bring values outside the region's range or id set.
    assert out_raw.min() >= 1 and out_raw.max() <= 2
    _assert_subset(out_labels, labels)
    with pytest.raises(ValueError, match=r"region \(10, 10, 10\) is smaller than the patch \(11, 8, 8\)"):
        geometric.warp(raw, labels, (11, 8, 8))


def test_elastic_field_is_bounded_smooth_and_in_plane_when_asked():
    rng = np.random.default_rng(0)
    field = geometric.elastic_displacement((24, 30, 36), rng, 5.0, 16)
    assert field.shape == (3, 24, 30, 36)
    assert np.abs(field).max() <= 5.0 and np.abs(field).max() > 1.0
    for axis in range(3):
        # slope at most 2 * magnitude / spacing: the warp cannot fold
        assert np.abs(np.diff(field[axis], axis=axis)).max() <= 2 * 5.0 / 16 * 1.5
    flat = geometric.elastic_displacement((8, 30, 36), rng, 5.0, 16, axes=(1, 2))
    assert not flat[0].any() and flat[1].any()


def test_elastic_changes_geometry_keeps_ids_and_is_deterministic():
    raw, labels = _coded((20, 28, 28))
    first = geometric.elastic(raw, labels, np.random.default_rng(5), (12, 20, 20), magnitude=4.0, spacing=10)
    again = geometric.elastic(raw, labels, np.random.default_rng(5), (12, 20, 20), magnitude=4.0, spacing=10)
    other = geometric.elastic(raw, labels, np.random.default_rng(6), (12, 20, 20), magnitude=4.0, spacing=10)
    out_raw, out_labels = first
    assert out_raw.shape == out_labels.shape == (12, 20, 20)
    assert out_raw.dtype == np.float32 and out_labels.dtype == np.uint64
    _assert_subset(out_labels, labels)
    crop = labels[4:16, 4:24, 4:24]
    assert (out_labels != crop).mean() > 0.5
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
    # Displacements stay within the magnitude (plus rounding to the nearest voxel).
    z, y, x = _decode(out_labels)
    grid = np.indices((12, 20, 20)) + np.array([4, 4, 4])[:, None, None, None]
    assert max(np.abs(c - g).max() for c, g in zip((z, y, x), grid)) <= 5


def test_elastic_in_plane_keeps_every_voxel_in_its_section():
    raw, labels = _coded((10, 30, 30))
    out = geometric.elastic(raw, labels, np.random.default_rng(2), (10, 20, 20), 4.0, 10, axes=(1, 2))[1]
    z = _decode(out)[0]
    np.testing.assert_array_equal(z, np.broadcast_to(np.arange(10)[:, None, None], z.shape))


def test_rescale_zooms_z_and_plane_separately():
    raw, labels = _coded((24, 40, 40))
    rng = np.random.default_rng(0)
    out_raw, out_labels = geometric.rescale(raw, labels, rng, (12, 16, 16), zoom_z=(1.0, 1.0), zoom_xy=(0.5, 0.5))
    z, y, x = _decode(out_labels)
    # Zoom 0.5 in-plane: 16 output voxels span 30 input voxels; z keeps its spacing.
    assert np.ptp(z) == 11 and np.ptp(y) in (30, 31) and np.ptp(x) in (30, 31)
    np.testing.assert_array_equal(np.diff(x[0, 0]), np.full(15, 2))
    magnified = geometric.rescale(raw, labels, rng, (12, 16, 16), zoom_z=(2.0, 2.0), zoom_xy=(1.0, 1.0))[1]
    assert np.ptp(_decode(magnified)[0]) in (5, 6)
    _assert_subset(magnified, labels)
    assert out_raw.dtype == np.float32
    repeat = geometric.rescale(raw, labels, np.random.default_rng(9), (12, 16, 16), (0.8, 1.2), (0.8, 1.2))
    again = geometric.rescale(raw, labels, np.random.default_rng(9), (12, 16, 16), (0.8, 1.2), (0.8, 1.2))
    np.testing.assert_array_equal(repeat[1], again[1])


def test_misalignment_translation_and_slip():
    raw, labels = _coded((10, 24, 24))
    shifts = np.zeros((10, 2), np.int64)
    shifts[4:] = (3, -2)
    out_raw, out_labels = geometric.warp(raw, labels, (10, 16, 16), shifts=shifts)
    np.testing.assert_array_equal(out_raw.astype(np.uint64), out_labels)
    np.testing.assert_array_equal(out_labels[:4], labels[:4, 4:20, 4:20])
    np.testing.assert_array_equal(out_labels[4:], labels[4:, 7:23, 2:18])
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(40):
        drawn = misalignment_shifts(10, rng, 4, slip=0.5)
        moved = np.flatnonzero(drawn.any(axis=1))
        assert len(moved) >= 1 and np.abs(drawn).max() <= 4
        assert (drawn[moved] == drawn[moved[0]]).all()
        if len(moved) == 1 and moved[0] < 9:
            kinds.add("slip")
        else:
            assert moved[-1] == 9 and np.array_equal(moved, np.arange(moved[0], 10))
            kinds.add("translation")
    assert kinds == {"slip", "translation"}
    first = misalign(raw, labels, np.random.default_rng(4), (10, 16, 16), 4, 0.5)
    second = misalign(raw, labels, np.random.default_rng(4), (10, 16, 16), 4, 0.5)
    np.testing.assert_array_equal(first[1], second[1])
    _assert_subset(first[1], labels)
    assert not np.array_equal(first[1], labels[:, 4:20, 4:20])
