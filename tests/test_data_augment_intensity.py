"""Intensity augmentations and section defects: what changes, what stays, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from melecole.data.augment import defects, intensity


def _raw(shape=(8, 32, 32), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _changed_box(before, after):
    # The bounding box of changed voxels, and whether every voxel inside it changed.
    changed = before != after
    where = np.argwhere(changed)
    low, high = where.min(axis=0), where.max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(low, high))
    return box, changed


def _run_twice(function, raw, seed, **kwargs):
    return function(raw, np.random.default_rng(seed), **kwargs), function(raw, np.random.default_rng(seed), **kwargs)


def test_grayscale_with_fixed_draws_is_the_affine_map():
    raw = _raw()
    before = raw.copy()
    out = intensity.grayscale(raw, np.random.default_rng(0), contrast=(2.0, 2.0), brightness=(0.5, 0.5),
                              gamma=(1.0, 1.0))
    np.testing.assert_array_equal(raw, before)
    assert out.dtype == np.float32 and out.shape == raw.shape
    np.testing.assert_allclose(out, raw * 2 + 0.5, atol=1e-5)


def test_grayscale_gamma_keeps_the_range_and_order():
    raw = _raw()
    out = intensity.grayscale(raw, np.random.default_rng(0), (1, 1), (0, 0), gamma=(2.0, 2.0))
    np.testing.assert_allclose([out.min(), out.max()], [raw.min(), raw.max()], atol=1e-5)
    order = np.argsort(raw, axis=None)
    assert (np.diff(out.ravel()[order]) >= -1e-6).all()  # monotonic
    assert np.mean(out) < np.mean(raw)  # gamma 2 darkens the mid-tones


def test_grayscale_per_section_draws_differ_between_sections():
    raw = _raw()
    whole, again = _run_twice(intensity.grayscale, raw, 1, contrast=(0.5, 2.0), brightness=(-1, 1),
                              gamma=(1, 1), per_section=False)
    np.testing.assert_array_equal(whole, again)
    per, _ = _run_twice(intensity.grayscale, raw, 1, contrast=(0.5, 2.0), brightness=(-1, 1), gamma=(1, 1),
                        per_section=True)
    ratios = lambda out: out.std(axis=(1, 2)) / raw.std(axis=(1, 2))  # noqa: E731
    assert np.ptp(ratios(whole)) < 1e-4
    assert np.ptp(ratios(per)) > 0.1


def test_cut_noise_changes_one_box_only():
    raw = _raw()
    out, again = _run_twice(intensity.cut_noise, raw, 3, size=(0.25, 0.5), scale=(0.5, 0.5))
    np.testing.assert_array_equal(out, again)
    box, changed = _changed_box(raw, out)
    assert changed[box].all() and changed.sum() == changed[box].sum()
    sides = [s.stop - s.start for s in box]
    assert all(round(0.25 * n) <= side <= round(0.5 * n) for side, n in zip(sides, raw.shape))
    assert abs(np.std(out[box] - raw[box]) - 0.5) < 0.1


def test_cut_blur_smooths_one_box_and_keeps_the_rest():
    raw = _raw((16, 32, 32))
    out, again = _run_twice(intensity.cut_blur, raw, 4, size=(0.5, 0.5), factor=(4.0, 4.0))
    np.testing.assert_array_equal(out, again)
    box, changed = _changed_box(raw, out)
    assert changed.sum() == changed[box].sum()
    assert [s.stop - s.start for s in box] == [8, 16, 16]
    roughness = lambda a: np.abs(np.diff(a, axis=2)).mean()  # noqa: E731
    assert roughness(out[box]) < 0.5 * roughness(raw[box])


def test_cut_blur_in_plane_keeps_z_resolution():
    # Each section is constant: an in-plane blur leaves it exactly so, a z blur would mix them.
    raw = np.repeat(np.arange(16, dtype=np.float32)[:, None, None] % 2, 32, axis=1).repeat(32, axis=2)
    out = intensity.cut_blur(raw, np.random.default_rng(0), (0.5, 0.5), (4.0, 4.0), axes=(1, 2))
    np.testing.assert_allclose(out, raw, atol=1e-6)
    mixed = intensity.cut_blur(raw, np.random.default_rng(0), (0.5, 0.5), (4.0, 4.0), axes=(0, 1, 2))
    assert np.abs(mixed - raw).max() > 0.2


def test_missing_section_blanks_whole_interior_sections():
    raw = _raw()
    seen = set()
    for seed in range(20):
        out = defects.missing_section(raw, np.random.default_rng(seed), sections=(1, 2), value=-3.0)
        blank = [z for z in range(8) if (out[z] == -3.0).all()]
        assert 1 <= len(blank) <= 2 and 0 not in blank and 7 not in blank
        kept = [z for z in range(8) if z not in blank]
        np.testing.assert_array_equal(out[kept], raw[kept])
        seen.add(len(blank))
    assert seen == {1, 2}
    first, second = _run_twice(defects.missing_section, raw, 5, sections=(1, 2))
    np.testing.assert_array_equal(first, second)


def test_missing_parts_blanks_an_ellipse_in_a_few_sections():
    raw = _raw((8, 40, 40))
    out, again = _run_twice(defects.missing_parts, raw, 2, sections=(2, 2), radius=(0.2, 0.3), value=7.0)
    np.testing.assert_array_equal(out, again)
    holed = [z for z in range(8) if (out[z] == 7.0).any()]
    assert len(holed) == 2
    for z in range(8):
        if z not in holed:
            np.testing.assert_array_equal(out[z], raw[z])
    for z in holed:
        hole = out[z] == 7.0
        np.testing.assert_array_equal(out[z][~hole], raw[z][~hole])
        assert hole.sum() <= np.pi * 12 * 12 + 40  # semi-axes at most 0.3 * 40 voxels


def test_line_kernel_and_motion_blur():
    horizontal = defects.line_kernel(5, 0.0)
    assert horizontal.shape == (5, 5) and np.isclose(horizontal.sum(), 1)
    assert horizontal[2].sum() == pytest.approx(1)
    vertical = defects.line_kernel(5, np.pi / 2)
    assert vertical[:, 2].sum() == pytest.approx(1)
    raw = _raw((8, 32, 32))
    out, again = _run_twice(defects.motion_blur, raw, 0, sections=(2, 2), length=(7, 7))
    np.testing.assert_array_equal(out, again)
    blurred = [z for z in range(8) if not np.array_equal(out[z], raw[z])]
    assert len(blurred) == 2
    for z in blurred:
        assert out[z].std() < 0.7 * raw[z].std()
    assert out.dtype == np.float32


@pytest.mark.parametrize("function,kwargs", [
    (intensity.grayscale, {"contrast": (0.8, 1.2), "brightness": (-0.1, 0.1), "gamma": (0.8, 1.2)}),
    (intensity.cut_blur, {"size": (0.3, 0.6), "factor": (2.0, 3.0)}),
    (intensity.cut_noise, {"size": (0.3, 0.6), "scale": (0.1, 0.2)}),
    (defects.missing_section, {"sections": (1, 1)}),
    (defects.missing_parts, {"sections": (1, 1), "radius": (0.1, 0.2)}),
    (defects.motion_blur, {"sections": (1, 1), "length": (3, 5)}),
])
def test_raw_only_augmentations_keep_their_input_and_reject_bad_shapes(function, kwargs):
    raw = _raw((6, 20, 20))
    before = raw.copy()
    out = function(raw, np.random.default_rng(0), **kwargs)
    np.testing.assert_array_equal(raw, before)
    assert out.shape == raw.shape and out.dtype == np.float32 and not np.array_equal(out, raw)
    with pytest.raises(ValueError, match=r"\(20, 20\)"):
        function(raw[0], np.random.default_rng(0), **kwargs)
