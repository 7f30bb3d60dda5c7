"""The augmentation pipeline and its parameters: read shapes, every augmentation alone and all together."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from melecole.data.augment import AUGMENTATIONS, AugmentConfig, build_augmenter, isolate, read_shape

PATCH = (16, 16, 16)


def _coded(shape):
    # Each voxel's label encodes its position: id = z * 10^6 + y * 10^3 + x + 1.
    z, y, x = np.indices(shape)
    labels = (z * 1_000_000 + y * 1_000 + x + 1).astype(np.uint64)
    return (labels % 97).astype(np.float32) / 97, labels


def test_read_shape_adds_the_margins_of_the_geometric_augmentations():
    off = AugmentConfig(**{name: {"p": 0.0} for name in AUGMENTATIONS})
    assert read_shape(off, (16, 32, 48)) == (16, 32, 48)
    assert read_shape(AugmentConfig(enabled=False), (16, 32, 48)) == (16, 32, 48)
    elastic = isolate(AugmentConfig(elastic={"magnitude": 2.5, "spacing": 8}), "elastic")
    assert read_shape(elastic, (16, 32, 48)) == (22, 38, 54)  # 2 * ceil(2.5) per axis
    flat = elastic.model_copy(update={"anisotropic": True})
    assert read_shape(flat, (16, 32, 48)) == (16, 38, 54)
    shifted = isolate(AugmentConfig(misalignment={"max_shift": 3}), "misalignment")
    assert read_shape(shifted, (16, 32, 48)) == (16, 38, 54)
    zoomed = isolate(AugmentConfig(rescale={"zoom_z": (0.5, 1.0), "zoom_xy": (0.8, 2.0)}), "rescale")
    assert read_shape(zoomed, (16, 32, 40)) == (32, 40, 50)
    # Transposes may exchange any axes of isotropic data, a quarter turn only y and x.
    assert read_shape(isolate(AugmentConfig(), "flip_transpose"), (16, 32, 48)) == (48, 48, 48)
    assert read_shape(isolate(AugmentConfig(), "rotate90"), (16, 32, 48)) == (16, 48, 48)
    anisotropic = isolate(AugmentConfig(anisotropic=True), "flip_transpose")
    assert read_shape(anisotropic, (16, 32, 48)) == (16, 48, 48)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_augmentation_alone_shapes_dtypes_ids_determinism(name):
    config = isolate(AugmentConfig(), name)
    raw, labels = _coded(read_shape(config, PATCH))
    before = raw.copy(), labels.copy()
    augment = build_augmenter(config, PATCH)
    out_raw, out_labels = augment(raw, labels, np.random.default_rng(11))
    again_raw, again_labels = augment(raw, labels, np.random.default_rng(11))
    assert out_raw.shape == out_labels.shape == PATCH
    assert out_raw.dtype == np.float32 and out_labels.dtype == np.uint64
    assert out_raw.flags.c_contiguous and out_labels.flags.c_contiguous
    assert np.isin(out_labels, labels).all()
    np.testing.assert_array_equal(out_raw, again_raw)
    np.testing.assert_array_equal(out_labels, again_labels)
    np.testing.assert_array_equal(raw, before[0])
    np.testing.assert_array_equal(labels, before[1])
    # Each augmentation does something to the central patch (one of a few seeds at least).
    centre = tuple(slice((n - p) // 2, (n - p) // 2 + p) for n, p in zip(raw.shape, PATCH))
    changed = any(
        not (np.array_equal(r, raw[centre]) and np.array_equal(lab, labels[centre]))
        for r, lab in (augment(raw, labels, np.random.default_rng(seed)) for seed in range(4))
    )
    assert changed


@pytest.mark.parametrize("name", ["grayscale", "motion_blur", "cut_blur", "cut_noise", "missing_parts",
                                  "missing_section"])
def test_intensity_augmentations_leave_labels_untouched(name):
    config = isolate(AugmentConfig(), name)
    raw, labels = _coded(read_shape(config, PATCH))
    out_raw, out_labels = build_augmenter(config, PATCH)(raw, labels, np.random.default_rng(0))
    np.testing.assert_array_equal(out_labels, labels)  # no margin needed: the region is the patch
    assert not np.array_equal(out_raw, raw)


def test_default_pipeline_is_deterministic_and_varies_with_the_seed():
    config = AugmentConfig()
    raw, labels = _coded(read_shape(config, PATCH))
    augment = build_augmenter(config, PATCH)
    outputs = [augment(raw, labels, np.random.default_rng(seed)) for seed in (0, 0, 1)]
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    assert not np.array_equal(outputs[0][0], outputs[2][0])
    rng = np.random.default_rng(2)
    for _ in range(30):
        out_raw, out_labels = augment(raw, labels, rng)
        assert out_raw.shape == PATCH and np.isfinite(out_raw).all()
        assert np.isin(out_labels, labels).all()


def test_anisotropic_pipeline_never_moves_voxels_between_sections_of_different_z():
    # With anisotropic data the output's sections are (possibly zoomed) source sections: every
    # output section holds labels of a single source z, and z runs along the output's z.
    config = AugmentConfig(anisotropic=True, rescale={"p": 0.0}, elastic={"p": 1.0},
                           misalignment={"p": 0.5}, flip_transpose={"p": 1.0})
    patch = (6, 24, 24)
    raw, labels = _coded(read_shape(config, patch))
    augment = build_augmenter(config, patch)
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = augment(raw, labels, rng)[1].astype(np.int64) - 1
        source_z = out // 1_000_000
        per_section = [np.unique(source_z[z]) for z in range(patch[0])]
        assert all(len(values) == 1 for values in per_section)
        assert np.abs(np.diff([v[0] for v in per_section])).tolist() == [1] * (patch[0] - 1)


def test_region_smaller_than_read_shape_still_gives_patches():
    # A volume thinner than the read shape (flyem-fib-small is 50 voxels in z): warps shrink to fit.
    config = AugmentConfig(rescale={"p": 1.0}, elastic={"p": 1.0}, misalignment={"p": 1.0})
    raw, labels = _coded((17, 30, 30))
    augment = build_augmenter(config, PATCH)
    rng = np.random.default_rng(0)
    for _ in range(10):
        out_raw, out_labels = augment(raw, labels, rng)
        assert out_labels.shape == PATCH and np.isin(out_labels, labels).all()


def test_disabled_config_is_the_central_crop():
    raw, labels = _coded((20, 20, 20))
    out_raw, out_labels = build_augmenter(AugmentConfig(enabled=False), PATCH)(raw, labels, np.random.default_rng(0))
    np.testing.assert_array_equal(out_labels, labels[2:18, 2:18, 2:18])
    np.testing.assert_array_equal(out_raw, raw[2:18, 2:18, 2:18])


def test_config_round_trips_through_yaml_and_rejects_bad_values():
    config = AugmentConfig(anisotropic=True, grayscale={"contrast": [0.5, 1.5]})
    loaded = AugmentConfig.model_validate(yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json"))))
    assert loaded == config
    with pytest.raises(ValidationError, match="elastc"):
        AugmentConfig.model_validate({"elastc": {"p": 0.5}})
    with pytest.raises(ValidationError, match=r"low <= high"):
        AugmentConfig(grayscale={"gamma": (1.5, 0.5)})
    with pytest.raises(ValidationError, match="fold"):
        AugmentConfig(elastic={"magnitude": 10, "spacing": 16})
    with pytest.raises(ValidationError):
        AugmentConfig(cut_noise={"p": 1.5})
    with pytest.raises(ValidationError):
        AugmentConfig(rescale={"zoom_z": (0.0, 1.0)})
    with pytest.raises(ValidationError):
        config.anisotropic = False  # frozen
    with pytest.raises(ValueError, match="unknown augmentation 'blur'"):
        isolate(config, "blur")
