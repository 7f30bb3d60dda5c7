"""segment --blockwise: fragments per block, one graph across blocks, relabelling; the result
matches the whole-volume agglomeration and the in-memory block reference, neurons crossing block
faces keep one id, and a rerun after completion is a no-op that reproduces the output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

from melecole.evaluate import evaluate_segmentation
from melecole.inference.encoding import decode, encode
from melecole.io import create_container, open_container
from melecole.segment.graph import segment_via_graph
from tests.conftest import tiny_params_dict

MELECOLE = [sys.executable, "-m", "melecole.cli"]
SHAPE = (24, 48, 48)


def _labels(seed: int = 0, shape=SHAPE) -> np.ndarray:
    """Voronoi cells of random seeds: touching objects, many crossing any block face."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, dtype=np.int32)
    points = rng.integers(0, shape, size=(30, 3))
    seeds[tuple(points.T)] = np.arange(1, 31)
    _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    return seeds[tuple(nearest)].astype(np.uint64)


def _affinities(labels: np.ndarray, offsets, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((len(offsets),) + labels.shape, dtype=np.float32)
    for c, offset in enumerate(offsets):
        partner = np.roll(labels, shift=[-d for d in offset], axis=(0, 1, 2))
        out[c] = labels == partner
    noise = ndimage.gaussian_filter(rng.normal(size=out.shape).astype(np.float32), sigma=(0, 1, 1, 1)) * 0.6
    return np.clip(out * 0.8 + 0.1 + noise, 0, 1)


def _write_predictions(path: Path, offsets, shape=SHAPE) -> np.ndarray:
    labels = _labels(shape=shape)
    affinities = _affinities(labels, offsets)
    container = create_container(path)
    for name, values in (("affinities", affinities), ("predicted_affinities", affinities),
                         ("boundary", 1.0 - affinities[:3].min(axis=0))):
        dataset = container.create_dataset(name, values.shape, np.uint8, chunks=values.shape[:-3] + (8, 8, 8),
                                           voxel_size=(8.0, 8.0, 8.0))
        dataset.write((0, 0, 0), encode(name, values))
    container.set_attrs({"offsets": json.dumps([list(o) for o in offsets]), "agglomeration_threshold": 0.5})
    return labels


def _segment(tmp_path: Path, params: Path, out: Path, *extra: str) -> dict:
    command = [*MELECOLE, "segment", "--params", str(params), "--predictions", str(tmp_path / "pred.zarr"),
               "--out", str(out), "--quiet", *extra]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _setup(tmp_path: Path, shape=SHAPE) -> tuple[Path, np.ndarray, list]:
    params = tiny_params_dict(**{"segment.agglomeration.source": "affinities", "segment.baselines": [],
                                 "model.affinity_head": True,
                                 "segment.min_size": 20, "predict.chunks": [8, 8, 8]})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    offsets = [tuple(o) for o in params["segment"]["offsets"]]
    return path, _write_predictions(tmp_path / "pred.zarr", offsets, shape), offsets


def _vi(a: np.ndarray, b: np.ndarray) -> float:
    scores = evaluate_segmentation(a, b + 1)  # b + 1: no voxel ignored
    return scores["vi_split"] + scores["vi_merge"]


def test_blockwise_matches_the_whole_volume_and_the_block_reference(tmp_path):
    params, labels, _ = _setup(tmp_path)
    whole_figures = _segment(tmp_path, params, tmp_path / "whole.h5")
    figures = _segment(tmp_path, params, tmp_path / "blocks.zarr", "--blockwise", "--workers", "2",
                       "--block", "8", "16", "16")
    assert figures["blocks"]["fragments"]["blocks"] == 27 and figures["threshold"] == 0.5
    whole = open_container(tmp_path / "whole.h5").dataset("segmentation").read()
    blocks = open_container(tmp_path / "blocks.zarr").dataset("segmentation").read()
    assert blocks.dtype == np.uint64 and blocks.shape == SHAPE and blocks.min() >= 1
    assert figures["segments"] == len(np.unique(blocks)) == blocks.max()  # consecutive ids
    assert _vi(blocks, whole) < 0.05, (_vi(blocks, whole), whole_figures, figures)
    assert _vi(whole, labels) < 0.5  # the affinities are good enough to segment at all
    # The daisy run computes exactly what the in-memory block reference computes.
    nearest = decode(open_container(tmp_path / "pred.zarr").dataset("predicted_affinities").read())[:3]
    reference = segment_via_graph(nearest, 0.5, 20, block_shape=(8, 16, 16), context=8)
    assert _vi(blocks, reference) < 1e-9


def test_no_object_is_cut_at_a_block_face_where_the_whole_volume_keeps_it_whole(tmp_path):
    params, _, _ = _setup(tmp_path)
    _segment(tmp_path, params, tmp_path / "whole.h5")
    _segment(tmp_path, params, tmp_path / "blocks.zarr", "--blockwise", "--block", "8", "16", "16")
    whole = open_container(tmp_path / "whole.h5").dataset("segmentation").read()
    blocks = open_container(tmp_path / "blocks.zarr").dataset("segmentation").read()
    crossing = 0
    for label in np.unique(whole):
        where = np.nonzero(whole == label)
        spans = [(w // b).min() != (w // b).max() for w, b in zip(where, (8, 16, 16))]
        if any(spans) and len(where[0]) > 200:
            crossing += 1
            ids, counts = np.unique(blocks[where], return_counts=True)
            assert counts.max() >= 0.97 * len(where[0]), f"segment {label} split into {dict(zip(ids, counts))}"
    assert crossing >= 5


def test_a_finished_run_is_redone_from_scratch_and_unsupported_methods_are_refused(tmp_path):
    params, _, _ = _setup(tmp_path)
    first = _segment(tmp_path, params, tmp_path / "s.zarr", "--blockwise", "--block", "8", "24", "24")
    again = _segment(tmp_path, params, tmp_path / "s.zarr", "--blockwise", "--block", "8", "24", "24")
    assert not again["resumed"] and again["segments"] == first["segments"]
    data = yaml.safe_load(params.read_text())
    data["segment"]["method"] = "mws"
    params.write_text(yaml.safe_dump(data))
    result = subprocess.run([*MELECOLE, "segment", "--params", str(params), "--predictions", str(tmp_path / "pred.zarr"),
                             "--out", str(tmp_path / "m.zarr"), "--blockwise"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 2 and "agglomeration" in result.stderr and "Traceback" not in result.stderr


def test_a_killed_blockwise_segmentation_resumes_and_gives_the_same_result(tmp_path):
    params, _, _ = _setup(tmp_path, shape=(48, 64, 64))
    block = ["--blockwise", "--block", "8", "16", "16"]  # 96 blocks
    reference = _segment(tmp_path, params, tmp_path / "reference.zarr", *block)
    command = [*MELECOLE, "segment", "--params", str(params), "--predictions", str(tmp_path / "pred.zarr"),
               "--out", str(tmp_path / "s.zarr"), "--quiet", *block]
    process = subprocess.Popen(command, cwd=tmp_path, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    graphs = tmp_path / ".s.zarr.blockwise" / "graphs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(graphs.glob("*.npz"))) < 10:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = len(list(graphs.glob("*.npz")))
    assert 10 <= done < 96, f"kill came too late ({done} of 96 graph blocks)"
    assert not (tmp_path / "s.zarr").exists()
    resumed = _segment(tmp_path, params, tmp_path / "s.zarr", *block)
    assert resumed["resumed"]
    assert resumed["blocks"]["fragments"]["done_before"] == 96  # every fragment block was finished
    assert done - 1 <= resumed["blocks"]["graph"]["done_before"] <= done
    assert resumed["blocks"]["relabel"]["done_before"] == 0
    np.testing.assert_array_equal(open_container(tmp_path / "s.zarr").dataset("segmentation").read(),
                                  open_container(tmp_path / "reference.zarr").dataset("segmentation").read())
    assert resumed["segments"] == reference["segments"]
