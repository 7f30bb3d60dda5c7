"""The segment stage's Mutex Watershed and seeded watershed on predictions made from known labels:
right predictions (plus noise) give the labels back, wrong ones do not.

The predictions go through the stage as ``predict`` leaves them: uint8 datasets of an HDF5 file
with the offsets stored beside them, read back by :func:`melecole.stages.segment.segment`.
"""

from __future__ import annotations

import numpy as np
import pytest

from melecole.config import params_from_dict
from melecole.data.targets import affinities as affinity_targets
from melecole.data.targets import boundary_map
from melecole.evaluate import evaluate_segmentation
from melecole.inference.encoding import encode
from melecole.io import read_volume, write_volumes
from melecole.stages.segment import segment
from tests.conftest import tiny_params_dict

SHAPE = (24, 32, 32)


def _cells(seed: int, count: int = 8) -> np.ndarray:
    """(Z, Y, X) uint64 Voronoi cells of ``count`` random centres: convex objects of unequal
    sizes and shapes, touching along oblique faces, every voxel labelled."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (count, 3)) * np.array(SHAPE)  # (K, 3)
    grid = np.indices(SHAPE).reshape(3, -1).T[:, None, :]  # (N, 1, 3)
    return (np.argmin(((grid - centres) ** 2).sum(-1), axis=1) + 1).reshape(SHAPE).astype(np.uint64)


LABELS = _cells(3)
OTHER = _cells(103)  # another labelling of the same volume


def _config(method: str):
    return params_from_dict(tiny_params_dict(**{"segment.method": method, "segment.baselines": []})).segment


def _exact(labels: np.ndarray, offsets, noise: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The affinity and boundary targets of ``labels``, plus uniform noise of +-``noise``."""
    rng = np.random.default_rng(seed)
    affinities, _ = affinity_targets(labels, offsets)
    boundary = boundary_map(labels)

    def noisy(values):
        return np.clip(values + rng.uniform(-noise, noise, values.shape), 0, 1).astype(np.float32)

    return noisy(affinities), noisy(boundary)


def _segment(tmp_path, method: str, affinities: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    config = _config(method)
    offsets = "[" + ", ".join(f"[{a}, {b}, {c}]" for a, b, c in config.offsets) + "]"
    write_volumes(tmp_path / "pred.h5", {"affinities": encode("affinities", affinities),
                                         "boundary": encode("boundary", boundary)}, {"offsets": offsets})
    segment(config, tmp_path / "pred.h5", tmp_path / "seg.h5")
    return read_volume(f"{tmp_path / 'seg.h5'}:segmentation")


def _vi(segmentation: np.ndarray, labels: np.ndarray) -> float:
    scores = evaluate_segmentation(segmentation, labels)
    return scores["vi_split"] + scores["vi_merge"]


def _interior(labels: np.ndarray) -> np.ndarray:
    """The labels off the boundary map (boundary voxels 0: ignored by the evaluation)."""
    return np.where(boundary_map(labels) == 0, labels, 0)


def test_the_mutex_watershed_recovers_the_labels_of_exact_affinities(tmp_path):
    config = _config("mws")
    segmentation = _segment(tmp_path, "mws", *_exact(LABELS, config.offsets, noise=0.2))
    assert segmentation.shape == LABELS.shape and segmentation.dtype == np.uint64
    assert _vi(segmentation, LABELS) < 0.05  # measured 0.001: a few voxels of a corner
    assert _vi(segmentation, _interior(LABELS)) == pytest.approx(0, abs=1e-9)


def test_the_seeded_watershed_recovers_the_labels_of_an_exact_boundary_map(tmp_path):
    config = _config("watershed")
    segmentation = _segment(tmp_path, "watershed", *_exact(LABELS, config.offsets, noise=0.2))
    assert segmentation.shape == LABELS.shape and segmentation.dtype == np.uint64
    # Measured 0.48 (0.04 off the boundary): the flooding shares the 2-voxel-thick boundary sheets
    # between the neighbours unevenly, and a smoothed distance maximum may seed a cell twice.
    # Every wrong input below scores above 2.5.
    assert _vi(segmentation, LABELS) < 0.75
    assert _vi(segmentation, _interior(LABELS)) < 0.15


# elf's watershed divides by the distance transform's maximum, 0 on an all-boundary map.
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
@pytest.mark.parametrize("method", ["mws", "watershed"])
@pytest.mark.parametrize("wrong", ["merge-everything", "boundary-everywhere", "another-labelling"])
def test_wrong_predictions_do_not_give_the_labels(tmp_path, method, wrong):
    config = _config(method)
    channels = (len(config.offsets),) + SHAPE
    if wrong == "merge-everything":
        affinities, boundary = np.ones(channels, np.float32), np.zeros(SHAPE, np.float32)
    elif wrong == "boundary-everywhere":
        affinities, boundary = np.zeros(channels, np.float32), np.ones(SHAPE, np.float32)
    else:
        affinities, boundary = _exact(OTHER, config.offsets, noise=0.2)
    segmentation = _segment(tmp_path, method, affinities, boundary)
    assert _vi(segmentation, LABELS) > 2.0
    if wrong == "another-labelling":
        # The segmentation follows its input: it is the other labelling's, as well as above.
        assert _vi(segmentation, _interior(OTHER)) < (1e-9 if method == "mws" else 0.3)  # measured 0 and 0.16
