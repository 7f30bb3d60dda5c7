"""The synthetic SNEMI3D-like generator: determinism, dense connected labels, EM-like appearance."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from melecole.data.synthetic import make_synthetic_volume


@pytest.fixture(scope="module")
def clean():
    return make_synthetic_volume(defects=False, seed=3)


def _xy_boundary(labels: np.ndarray) -> np.ndarray:
    """Both voxels of every in-section label change (written independently of the module)."""
    mask = np.zeros(labels.shape, dtype=bool)
    for axis in (1, 2):
        change = np.diff(labels.astype(np.int64), axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        mask[tuple(lo)] |= change
        mask[tuple(hi)] |= change
    return mask


def test_same_arguments_give_identical_bytes():
    first = make_synthetic_volume(shape=(10, 48, 40), neurites=12, seed=7)
    second = make_synthetic_volume(shape=(10, 48, 40), neurites=12, seed=7)
    assert first[0].tobytes() == second[0].tobytes()
    assert first[1].tobytes() == second[1].tobytes()


def test_shapes_and_dtypes():
    raw, labels = make_synthetic_volume(shape=(12, 64, 80), anisotropy=4.0, neurites=15, seed=1)
    assert raw.shape == labels.shape == (12, 64, 80)
    assert raw.dtype == np.uint8
    assert labels.dtype == np.uint32


def test_labels_dense_consecutive_and_each_one_component(clean):
    _, labels = clean
    assert (labels == 0).sum() == 0
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
    assert ids.size >= 20
    objects = ndi.find_objects(labels)
    face = ndi.generate_binary_structure(3, 1)  # 6-connectivity
    for label_id, box in enumerate(objects, start=1):
        _, pieces = ndi.label(labels[box] == label_id, structure=face)
        assert pieces == 1, f"label {label_id} has {pieces} 6-connected pieces"


def test_neurites_are_tubes_of_varied_calibre(clean):
    _, labels = clean
    z_index = np.nonzero(labels)[0]
    # (label, z) -> voxel count: each neuron's cross-section area in every section.
    areas = np.zeros((labels.max() + 1, labels.shape[0]), dtype=np.int64)
    np.add.at(areas, (labels[labels > 0], z_index), 1)
    areas = areas[1:]
    sections = (areas > 0).sum(axis=1)
    # Most neurons run through several sections rather than being flat blobs.
    assert np.mean(sections >= 3) > 0.6
    typical = np.array([np.median(row[row > 0]) for row in areas])
    assert np.percentile(typical, 90) > 3 * np.percentile(typical, 10)


def test_membranes_are_darker_than_cytoplasm(clean):
    raw, labels = clean
    boundary = _xy_boundary(labels)
    assert 0.02 < boundary.mean() < 0.5
    assert raw[~boundary].mean() - raw[boundary].mean() > 40


def test_different_seeds_give_different_volumes():
    raw_a, labels_a = make_synthetic_volume(shape=(8, 48, 48), neurites=10, seed=0)
    raw_b, labels_b = make_synthetic_volume(shape=(8, 48, 48), neurites=10, seed=1)
    assert not np.array_equal(raw_a, raw_b)
    assert not np.array_equal(labels_a, labels_b)


def test_defects_change_a_few_raw_sections_only(clean):
    raw_clean, labels_clean = clean
    raw_defect, labels_defect = make_synthetic_volume(defects=True, seed=3)
    np.testing.assert_array_equal(labels_defect, labels_clean)
    changed = [z for z in range(raw_clean.shape[0]) if not np.array_equal(raw_clean[z], raw_defect[z])]
    assert len(changed) == 3
    blank = [z for z in changed if raw_defect[z].max() == 0]
    assert len(blank) == 1 and raw_clean[blank[0]].max() > 0
    low_contrast = [z for z in changed if raw_defect[z].std() < 0.6 * raw_clean[z].std() and z not in blank]
    assert len(low_contrast) == 1


def test_default_size_is_fast():
    start = time.perf_counter()
    make_synthetic_volume()
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("kwargs", [{"shape": (0, 10, 10)}, {"shape": (4, 10)}, {"anisotropy": 0.0},
                                    {"neurites": 0}, {"noise": -0.1}])
def test_invalid_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        make_synthetic_volume(**kwargs)
