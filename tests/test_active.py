"""Active learning: uncertainty scores, block ranking, select / add stages, the CLI and the simulation."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from melecole.active.blocks import Block, block_grid, block_scores, rank_blocks, ranking_csv
from melecole.active.uncertainty import (SCORES, ViewMoments, binary_entropy, mean_entropy, tta_disagreement,
                                         uncertainty_map)
from melecole.active.views import nearest_neighbours, view_moments
from melecole.checkpoint import read_checkpoint
from melecole.cli import build_parser, main
from melecole.config import params_from_dict
from melecole.data.prepared import training_files
from melecole.errors import MelecoleError
from melecole.io import VolumeSpec, write_volumes
from melecole.stages.active import add, select
from melecole.stages.prepare import prepare
from melecole.stages.train import load_labelled
from tests.conftest import REPO, blocks_volume, tiny_params_dict
from tests.predict_helpers import random_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions on two threads of a shared machine wait more than they compute (20x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- uncertainty scores on hand-made inputs -------------------------------------------------------

def test_binary_entropy_hand_values():
    h = binary_entropy(np.array([0.0, 1.0, 0.5, 0.25, 1.2, -0.1]))
    expected = [0.0, 0.0, 1.0, -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75)), 0.0, 0.0]
    np.testing.assert_allclose(h, expected, atol=1e-6)
    assert h.dtype == np.float32


def test_certain_map_scores_lower_than_ambiguous_one():
    certain = np.stack([np.full((2, 4, 4), 0.98, np.float32)] * 4)  # (V=4, Z, Y, X): views agree
    ambiguous = np.stack([np.full((2, 4, 4), p, np.float32) for p in (0.1, 0.9, 0.2, 0.8)])
    agree, disagree = tta_disagreement(certain), tta_disagreement(ambiguous)
    assert agree.shape == (2, 4, 4)
    np.testing.assert_allclose(agree, 0.0, atol=1e-12)
    np.testing.assert_allclose(disagree, np.var([0.1, 0.9, 0.2, 0.8]), rtol=1e-5)
    assert mean_entropy(certain.mean(0)).max() < mean_entropy(np.full((2, 4, 4), 0.5)).min()
    np.testing.assert_allclose(mean_entropy(np.full((2, 4, 4), 0.5)), 1.0, atol=1e-6)


def test_view_moments_are_the_weighted_variance_and_skip_unvoted_views():
    views = np.array([[0.2, 0.4], [0.6, 0.4], [1.0, 0.9]])[:, None, :, None, None]  # (V=3, C=1, Z=2, 1, 1)
    weights = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 0.0]])[:, None, :, None, None]
    moments = ViewMoments((1, 2, 1, 1))
    for view, weight in zip(views, weights):
        moments.add(view, weight)
    first = np.array([0.2, 0.6, 1.0])
    mean = np.average(first, weights=[1, 1, 2])
    np.testing.assert_allclose(moments.mean()[0, :, 0, 0], [mean, 0.4], rtol=1e-6)
    np.testing.assert_allclose(moments.variance()[0, :, 0, 0],
                               [np.average((first - mean) ** 2, weights=[1, 1, 2]), 0.0], atol=1e-7)
    np.testing.assert_array_equal(moments.views[0, :, 0, 0], [3, 2])
    single = ViewMoments((1, 1, 1, 1))
    single.add(np.full((1, 1, 1, 1), 0.3))
    assert single.variance().max() == 0.0  # one view cannot disagree


def test_uncertainty_map_combines_boundary_and_affinities():
    boundary, affinities = ViewMoments((1, 1, 2, 2)), ViewMoments((3, 1, 2, 2))
    for value in (0.0, 1.0):
        boundary.add(np.full((1, 1, 2, 2), value))
        affinities.add(np.full((3, 1, 2, 2), 0.5))
    np.testing.assert_allclose(uncertainty_map("tta-disagreement", boundary, affinities), 0.25 / 4)
    np.testing.assert_allclose(uncertainty_map("boundary-entropy", boundary, affinities), 1.0, atol=1e-6)
    np.testing.assert_allclose(uncertainty_map("affinity-entropy", boundary, affinities), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown uncertainty score"):
        uncertainty_map("typo", boundary, affinities)


# --- block grid and ranking ---------------------------------------------------------------------

def test_block_grid_covers_whole_blocks_from_the_origin():
    blocks = block_grid((10, 20, 33), (5, 10, 16))
    assert [b.offset for b in blocks] == [(z, y, x) for z in (0, 5) for y in (0, 10) for x in (0, 16)]
    assert {b.shape for b in blocks} == {(5, 10, 16)}  # x 32..33 is no candidate
    assert block_grid((4, 8, 8), (16, 4, 8)) == [Block((0, 0, 0), (4, 4, 8)), Block((0, 4, 0), (4, 4, 8))]
    with pytest.raises(ValueError, match="three positive sizes"):
        block_grid((4, 8, 8), (0, 4, 4))


def test_ranking_picks_the_uncertain_block():
    rng = np.random.default_rng(0)
    views = np.stack([np.full((8, 16, 24), 0.9, np.float32)] * 4)  # 4 views that agree ...
    views[:, :, 8:, 8:16] = rng.uniform(0, 1, (4, 8, 8, 8))       # ... except in the block at (0, 8, 8)
    uncertainty = tta_disagreement(views)
    blocks = block_grid(uncertainty.shape, (8, 8, 8))
    ranking = rank_blocks(block_scores(uncertainty, blocks), blocks)
    assert ranking[0].block == Block((0, 8, 8), (8, 8, 8)) and ranking[0].rank == 1
    assert ranking[0].score > 0 and all(r.score == 0 for r in ranking[1:])
    assert [r.block.offset for r in ranking[1:]] == [b.offset for b in blocks if b.offset != (0, 8, 8)]  # stable
    lines = ranking_csv(ranking, {1: "block-001.h5"}).splitlines()
    assert lines[0] == "rank,z,y,x,size_z,size_y,size_x,score,file"
    assert lines[1].startswith("1,0,8,8,8,8,8,") and lines[1].endswith(",block-001.h5")


class _Pointwise(torch.nn.Module):
    """Outputs depend on each voxel alone: every flip of the input flips the outputs (equivariant)."""

    def forward(self, x):
        return {"embedding": torch.cat([x, -x], 1), "boundary": x}


class _Shifted(torch.nn.Module):
    """Looks one voxel to the side along x: a flip of x changes what it sees, where the image varies."""

    def forward(self, x):
        shifted = torch.roll(x, 1, dims=-1)
        return {"embedding": torch.cat([shifted, shifted], 1), "boundary": shifted}


def _noisy_block_volume() -> np.ndarray:
    raw = np.zeros((16, 32, 32), np.float32)
    raw[:, 16:, :16] = np.random.default_rng(1).normal(0, 1, (16, 16, 16))
    return raw


def test_views_of_an_equivariant_model_agree_and_a_shifted_model_marks_the_structured_block(tiny_params):
    offsets = tiny_params.segment.offsets
    raw = _noisy_block_volume()
    args = ((16, 16, 16), (4, 4, 4), 1, offsets, 1.5, "l2", "flips")
    boundary, affinities = view_moments(_Pointwise(), raw, *args)
    assert boundary.views.min() == 8 and affinities.variance().max() < 1e-10 and boundary.variance().max() < 1e-10
    boundary, affinities = view_moments(_Shifted(), raw, *args)
    uncertainty = uncertainty_map("tta-disagreement", boundary, affinities)
    blocks = block_grid(raw.shape, (16, 16, 16))
    assert rank_blocks(block_scores(uncertainty, blocks), blocks)[0].block.offset == (0, 16, 0)
    assert nearest_neighbours(offsets) == [0, 1, 2]


# --- select -------------------------------------------------------------------------------------

@pytest.fixture
def checkpoint(tmp_path, tiny_params):
    return random_checkpoint(tiny_params, tmp_path / "checkpoint.pt")


def _volume(tmp_path, shape=(16, 32, 48)):
    raw, labels = blocks_volume(shape=shape)
    path = tmp_path / "volume.h5"
    write_volumes(path, {"raw": raw, "labels": labels})
    return path, raw, labels


def test_select_writes_the_top_k_blocks_with_their_crops_and_the_ranking(tmp_path, tiny_params, checkpoint):
    path, raw, _ = _volume(tmp_path)
    out = tmp_path / "active"
    figures = select(tiny_params, checkpoint, VolumeSpec(path, "raw"), out, block=(16, 16, 16), top=2,
                     augment="permutations")
    assert figures["candidates"] == 6 and figures["selected"] == 2
    ranking = json.loads((out / "ranking.json").read_text())
    rows = ranking["blocks"]
    assert len(rows) == 6 and [r["rank"] for r in rows] == list(range(1, 7))
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert {tuple(r["offset"]) for r in rows} == {(0, y, x) for y in (0, 16) for x in (0, 16, 32)}
    assert [r["file"] for r in rows] == ["block-001.h5", "block-002.h5", None, None, None, None]
    assert sorted(p.name for p in out.iterdir()) == ["block-001.h5", "block-002.h5", "ranking.csv", "ranking.json"]
    assert len((out / "ranking.csv").read_text().splitlines()) == 7
    for row in rows[:2]:
        z, y, x = row["offset"]
        with h5py.File(out / row["file"], "r") as f:
            np.testing.assert_array_equal(f["raw"][...], raw[z:z + 16, y:y + 16, x:x + 16])
            assert f["raw"].dtype == raw.dtype and f["uncertainty"].shape == (16, 16, 16)
            assert list(f.attrs["offset"]) == row["offset"] and f.attrs["rank"] == row["rank"]
            assert float(np.mean(f["uncertainty"][...], dtype=np.float64)) == pytest.approx(row["score"], rel=1e-6)


def test_select_refuses_bad_requests_and_never_overwrites_proofread_blocks(tmp_path, tiny_params, checkpoint):
    path, raw, labels = _volume(tmp_path, shape=(16, 16, 16))
    with pytest.raises(MelecoleError, match="use --augment flips or permutations"):
        select(tiny_params, checkpoint, VolumeSpec(path, "raw"), tmp_path / "a", augment="none")
    with pytest.raises(MelecoleError, match="--top must be at least 1"):
        select(tiny_params, checkpoint, VolumeSpec(path, "raw"), tmp_path / "a", top=0)
    proofread = tmp_path / "proofread"
    write_volumes(proofread / "block-001.h5", {"raw": raw, "labels": labels})
    with pytest.raises(MelecoleError, match="block-001.h5 holds proofread labels"):
        select(tiny_params, checkpoint, VolumeSpec(path, "raw"), proofread, augment="none", score="boundary-entropy")
    assert (proofread / "block-001.h5").is_file()


# --- add ----------------------------------------------------------------------------------------

def _block(path, raw=None, labels=None, shape=(16, 16, 16), seed=0):
    raw_, labels_ = blocks_volume(shape=shape, seed=seed)
    arrays = {"raw": raw_ if raw is None else raw, "uncertainty": np.zeros(shape, np.float32)}
    if labels is not False:
        arrays["labels"] = labels_ if labels is None else labels
    write_volumes(path, arrays)
    return path


def test_add_writes_training_volumes_that_training_finds(tmp_path, prepared):
    blocks = tmp_path / "round1"
    for i in range(2):
        _block(blocks / f"block-00{i + 1}.h5", seed=i)
    written = add([blocks], prepared, min_shape=(16, 16, 16))
    assert [p.name for p in written] == ["train-active-round1-1.h5", "train-active-round1-2.h5"]
    train, _ = training_files(prepared)
    assert set(written) <= set(train)
    raw, labels = load_labelled(written[1])
    expected_raw, expected_labels = blocks_volume(shape=(16, 16, 16), seed=1)
    assert raw.dtype == np.float32 and labels.dtype == np.uint64
    np.testing.assert_array_equal(labels, expected_labels)
    with h5py.File(written[0], "r") as f:
        np.testing.assert_array_equal(f["raw"][...], blocks_volume(shape=(16, 16, 16), seed=0)[0])
        assert set(f) == {"raw", "labels"} and f.attrs["source"] == "active"
    with pytest.raises(MelecoleError, match="exist.*choose another --name"):
        add([blocks], prepared)


def test_prepare_copies_active_blocks_into_the_training_volumes(tmp_path):
    root = tmp_path / "datasets"
    add([_block(tmp_path / "proofread" / "b.h5")], root / "active", name="r1")
    params = params_from_dict(tiny_params_dict(**{"data.dataset": "synthetic", "data.bundled_root": str(root),
                                                  "data.synthetic": {"shape": [8, 24, 24], "neurites": 4}}))
    written = prepare(params.data, params.seed, tmp_path / "data")
    assert tmp_path / "data" / "train-active-r1-1.h5" in written
    train, _ = training_files(tmp_path / "data")
    assert [p.name for p in train] == ["train-active-r1-1.h5", "train.h5"]
    np.testing.assert_array_equal(load_labelled(train[0])[1], blocks_volume(shape=(16, 16, 16))[1])


@pytest.mark.parametrize("case, message", [
    ("shape", r"bad\.h5: raw \(16, 16, 16\) and labels \(16, 16, 8\) differ in shape"),
    ("float", r"bad\.h5:labels \(16, 16, 16\) has dtype float32; integer labels are required"),
    ("negative", r"bad\.h5:labels \(16, 16, 16\) holds negative ids"),
    ("empty", r"bad\.h5:labels \(16, 16, 16\) labels no voxel"),
    ("missing", r"bad\.h5: no dataset 'labels' \(datasets: raw, uncertainty\); write the proofread labels"),
    ("small", r"bad\.h5: block \(8, 16, 16\) is smaller than the training patch \(16, 16, 16\)"),
])
def test_add_rejects_bad_blocks_naming_file_dataset_and_shapes(tmp_path, case, message):
    good = _block(tmp_path / "blocks" / "a-good.h5")
    labels = blocks_volume(shape=(16, 16, 16))[1]
    bad = tmp_path / "blocks" / "bad.h5"
    if case == "shape":
        _block(bad, labels=labels[..., :8])
    elif case == "float":
        _block(bad, labels=labels.astype(np.float32))
    elif case == "negative":
        _block(bad, labels=labels.astype(np.int32) - 2)
    elif case == "empty":
        _block(bad, labels=np.zeros_like(labels))
    elif case == "missing":
        _block(bad, labels=False)
    else:
        _block(bad, shape=(8, 16, 16))
    out = tmp_path / "active"
    with pytest.raises(MelecoleError, match=message):
        add([good, bad], out, name="x", min_shape=(16, 16, 16))
    assert not out.exists() or not any(out.iterdir())  # all or nothing
    assert main(["active", "add", "--blocks", str(tmp_path / "blocks"), "--data", str(out)]) == 2


# --- command line -------------------------------------------------------------------------------

def _active_parsers() -> dict[str, argparse.ArgumentParser]:
    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    active = next(a for a in top.choices["active"]._actions if isinstance(a, argparse._SubParsersAction))
    return dict(active.choices)


def test_cli_help_lists_the_active_commands_with_their_defaults():
    parsers = _active_parsers()
    assert set(parsers) == {"select", "add"}
    for name, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"active {name} {action.option_strings}: no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in action.help, f"active {name} {action.option_strings}: default not shown"
    select_options = {a.dest: a for a in parsers["select"]._actions}
    assert tuple(select_options["score"].choices) == SCORES and select_options["top"].default == 10
    assert {a.dest: a.default for a in parsers["add"]._actions}["data"] == "datasets/active"
    assert "active" in build_parser().format_help()


def test_cli_select_then_add_round_trip(tmp_path, checkpoint, monkeypatch, capsys):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict()))
    path, raw, labels = _volume(tmp_path, shape=(16, 16, 32))
    out = tmp_path / "selected"
    assert main(["active", "select", "--params", str(params), "--checkpoint", str(checkpoint), "--raw",
                 f"{path}:raw", "--top", "1", "--augment", "permutations", "--out", str(out)]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["block"] == [16, 16, 16] and figures["candidates"] == 2  # train.patch is the default block
    z, y, x = json.loads((out / "ranking.json").read_text())["blocks"][0]["offset"]
    with h5py.File(out / "block-001.h5", "a") as f:  # the proofreader's work
        f["labels"] = labels[z:z + 16, y:y + 16, x:x + 16]
    assert main(["active", "add", "--params", str(params), "--blocks", str(out), "--data", str(tmp_path / "data")]) == 0
    assert capsys.readouterr().out.strip().endswith("train-active-selected-1.h5")


# --- simulation (benchmarks/active_learning.py) -------------------------------------------------

@pytest.mark.slow
def test_simulation_smoke_runs_both_strategies(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "active_learning.py"), "--smoke", "--steps", "2",
                             "--rounds", "1", "--initial", "1", "--per-round", "1", "--seeds", "3", "--threads", "1",
                             "--experiment", "experiments/active-learning.yaml", "--out", str(tmp_path / "sim")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["settings"]["experiment"] == ["experiments/active-learning.yaml"]
    assert figures["settings"]["threads"] == 1
    assert set(figures["strategies"]) == {"uncertainty", "random"}
    for curve in figures["strategies"].values():
        assert [p["labelled_blocks"] for p in curve] == [1, 2]
        assert all(np.isfinite(p["vi_sum_mean"]) and p["vi_sum_std"] >= 0 and len(p["vi_sum"]) == 3 for p in curve)
    assert (tmp_path / "sim" / "active_learning.png").stat().st_size > 0
    # Each round fine-tunes the strategy's previous model (the default, --training continue).
    assert figures["settings"]["training"] == "continue" and figures["seeds"] == [0, 1, 2]
    for seed, curves in figures["per_seed"].items():  # the blocks each round labelled, none twice
        for strategy, curve in curves.items():
            added = [tuple(corner) for point in curve for corner in point["added"]]
            assert [len(p["added"]) for p in curve] == [1, 1] and len(set(added)) == 2, (seed, strategy)
        assert curves["uncertainty"][0]["added"] == curves["random"][0]["added"]  # a shared first block
    assert [g["labelled_blocks"] for g in figures["vi_sum_gain_of_uncertainty"]] == [1, 2]
    assert figures["vi_sum_gain_of_uncertainty"][0]["per_seed"] == [0.0, 0.0, 0.0]  # the same first model
    for strategy in ("uncertainty", "random"):
        tuned = read_checkpoint(tmp_path / "sim" / "seed-1" / f"{strategy}-1" / "checkpoint.pt")
        assert tuned["params"]["train"]["init_from"] == str(tmp_path / "sim" / "seed-1" / "round-0" / "checkpoint.pt")
    first = read_checkpoint(tmp_path / "sim" / "seed-1" / "round-0" / "checkpoint.pt")
    assert first["params"]["train"]["init_from"] is None


def _simulation_run(path, seed: int, vi_sums: dict, settings=None):
    curves = {strategy: [{"labelled_blocks": blocks, "vi_split": vi / 2, "vi_merge": vi / 2, "vi_sum": vi}
                         for blocks, vi in zip((2, 4), values)] for strategy, values in vi_sums.items()}
    run = {"source": "synthetic", "pool": [8, 24, 24], "test": [8, 16, 16], "block": [8, 8, 8], "candidates": 9,
           "settings": settings or {"steps": 5, "training": "continue", "score": "tta-disagreement"},
           "strategies": {"random": [{"labelled_blocks": 2, "labelled_voxels": 1024}]},
           "per_seed": {str(seed): curves}, "seconds": 1.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run))
    return path


def test_simulation_runs_of_other_seeds_merge_into_one_curve_and_mismatches_are_refused(tmp_path):
    script = [sys.executable, str(REPO / "benchmarks" / "active_learning.py"), "--merge"]
    first = _simulation_run(tmp_path / "a" / "run.json", 0, {"uncertainty": (3.0, 2.0), "random": (3.0, 3.0)})
    second = _simulation_run(tmp_path / "b" / "run.json", 1, {"uncertainty": (4.0, 2.0), "random": (4.0, 2.5)})
    done = subprocess.run([*script, str(first), str(second), "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    merged = json.loads(done.stdout)
    assert merged["seeds"] == [0, 1]
    assert [p["vi_sum_mean"] for p in merged["strategies"]["uncertainty"]] == [3.5, 2.0]
    assert [p["labelled_voxels"] for p in merged["strategies"]["random"]] == [1024, 2048]
    final = merged["final_vi_sum_gain_of_uncertainty"]
    assert final["per_seed"] == [1.0, 0.5] and final["mean"] == 0.75 and final["wins"] == 2
    assert final["sem"] == pytest.approx(0.25)  # sample std 0.3536 / sqrt(2)
    assert [g["per_seed"] for g in merged["vi_sum_gain_of_uncertainty"]] == [[0.0, 0.0], [1.0, 0.5]]
    assert [g["wins"] for g in merged["vi_sum_gain_of_uncertainty"]] == [0, 2]
    assert (tmp_path / "m" / "active_learning.png").stat().st_size > 0
    same_seed = _simulation_run(tmp_path / "c" / "run.json", 1, {"uncertainty": (1.0, 1.0), "random": (1.0, 1.0)})
    other = _simulation_run(tmp_path / "d" / "run.json", 2, {"uncertainty": (1.0, 1.0), "random": (1.0, 1.0)},
                            settings={"steps": 9, "training": "continue", "score": "tta-disagreement"})
    for files, message in (((second, same_seed), "share a seed"), ((first, other), "settings")):
        refused = subprocess.run([*script, *map(str, files), "--out", str(tmp_path / "x")],
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and message in refused.stderr
