"""Pictures for MLflow: colours per label, embedding PCA, split / merge map, panels."""

from __future__ import annotations

import numpy as np
import pytest

from melecole.figures import error_map, label_colours, panel_image, pca_colours, result_image


def test_labels_get_stable_distinct_colours_and_background_is_black():
    labels = np.array([[0, 1, 2], [2**63, 1, 7]], dtype=np.uint64)
    rgb = label_colours(labels)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 0).all() and rgb[1, :].min() > 0
    np.testing.assert_array_equal(rgb[0, 1], rgb[1, 1])  # one label, one colour
    assert len({tuple(rgb[i, j]) for i, j in [(0, 1), (0, 2), (1, 0), (1, 2)]}) == 4


def test_pca_colours_follow_the_strongest_directions():
    rng = np.random.default_rng(0)
    embedding = rng.normal(0, 0.01, (6, 8, 8))
    embedding[2, :, :4] += 5.0  # the main direction splits the slice into left and right
    rgb = pca_colours(embedding)
    assert rgb.shape == (8, 8, 3)
    left, right = rgb[:, :4, 0].astype(int), rgb[:, 4:, 0].astype(int)
    assert abs(left.mean() - right.mean()) > 200


def test_error_map_marks_split_objects_and_merging_segments():
    gt = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 0, 0]])
    seg = np.array([[5, 5, 6, 6, 7, 7, 7, 7, 7, 7]])  # object 1 split in two; segment 7 = object 2 + unlabelled
    rgb = error_map(seg, gt)
    assert (rgb[0, :4] == (230, 40, 40)).all()  # split
    assert (rgb[0, 4:8] == 96).all()  # object 2 whole, and segment 7 holds no other object
    assert (rgb[0, 8:] == 0).all()  # no ground truth
    merged = error_map(np.array([[3, 3, 3, 3]]), np.array([[1, 1, 2, 2]]))
    assert (merged == (40, 80, 230)).all()


def test_result_image_puts_panels_side_by_side():
    raw = np.random.default_rng(1).random((5, 6, 7))
    labels = np.ones((5, 6, 7), np.uint64)
    image = result_image(raw, labels, labels, boundary=raw, embedding=np.random.default_rng(2).random((4, 5, 6, 7)))
    assert image.shape == (6, 6 * 7 + 5 * 4, 3) and image.dtype == np.uint8
    with pytest.raises(ValueError):
        panel_image([np.zeros((2, 2, 3), np.uint8), np.zeros((3, 2, 3), np.uint8)])
