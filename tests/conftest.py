"""Shared fixtures: tiny parameters and tiny labelled volumes, all under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

# The tests' models are tiny: starting a second thread costs more than the work (a 16^3 forward
# pass took 5 ms on one thread, 118 ms on two of a loaded 2-core machine). Set before torch is
# imported, so every subprocess (CLI, torchrun, DVC stages) inherits it; a caller's value wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

from melecole.config import params_from_dict
from melecole.io import write_volumes

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "datasets"


def tiny_params_dict(**overrides) -> dict:
    """Parameters small enough for a CPU test: base-4 U-Net, 16^3 patches, a few steps."""
    params = {
        "seed": 0,
        "data": {"dataset": "flyem-fib-small", "extra_train": [], "bundled_root": str(DATASETS)},
        "model": {"base_channels": 4, "embedding_dim": 4, "downsample": [[2, 2, 2]]},
        "train": {"steps": 3, "patch": [16, 16, 16], "val_every": 2, "log_every": 1, "min_labelled": 0.0},
        "predict": {"patch": [16, 16, 16], "overlap": [4, 4, 4]},
        # Offsets no longer than the tiles' overlap: affinities are computed inside each tile.
        "segment": {"min_size": 5, "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0],
                                               [0, 0, -3], [-4, -4, 0], [0, -4, -4], [-4, 0, -4]]},
        "tracking": {"enabled": False},
    }
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return params


def blocks_volume(shape=(16, 24, 24), block=8, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Cuboid 'cells' with dark membranes: a volume any segmenter can get right."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape) // block
    labels = (grid[0] * 100 + grid[1] * 10 + grid[2] + 1).astype(np.uint64)
    raw = np.full(shape, 200, dtype=np.float32)
    for axis in range(3):
        edge = np.diff(labels, axis=axis) != 0
        pad = [(0, 0)] * 3
        pad[axis] = (0, 1)
        raw[np.pad(edge, pad)] = 40
    raw += rng.normal(0, 5, shape).astype(np.float32)
    return np.clip(raw, 0, 255).astype(np.uint8), labels


@pytest.fixture
def tiny_params():
    return params_from_dict(tiny_params_dict())


@pytest.fixture
def prepared(tmp_path) -> Path:
    """A prepared folder with train.h5, val.h5 and test.h5 of block volumes."""
    folder = tmp_path / "data"
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        raw, labels = blocks_volume(seed=seed)
        write_volumes(folder / f"{split}.h5", {"raw": raw, "labels": labels})
    return folder
