"""The predict stage block by block: serial, 2 workers and a launcher give identical stored
predictions; a SIGKILLed run resumes with only its unfinished blocks; memory does not grow with
the volume; bad input is refused in one line before any work."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from melecole.config import params_from_dict
from melecole.io import open_container, write_volumes
from tests.conftest import blocks_volume, tiny_params_dict
from tests.predict_helpers import random_checkpoint

MELECOLE = [sys.executable, "-m", "melecole.cli"]


def _setup(tmp_path: Path, shape=(20, 40, 36), **overrides) -> tuple[Path, Path, Path]:
    raw, _ = blocks_volume(shape=shape)
    write_volumes(tmp_path / "raw.h5", {"raw": raw}, voxel_size=(8.0, 8.0, 8.0))
    params = tiny_params_dict(**{"predict.chunks": [8, 8, 8], "model.affinity_head": True, **overrides})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    checkpoint = random_checkpoint(params_from_dict(params), tmp_path / "checkpoint.pt")
    return tmp_path / "params.yaml", checkpoint, tmp_path / "raw.h5"


def _predict(params: Path, checkpoint: Path, raw: Path, out: Path, *extra: str, check: bool = True):
    command = [*MELECOLE, "predict", "--params", str(params), "--checkpoint", str(checkpoint),
               "--raw", f"{raw}:raw", "--out", str(out), "--quiet", *extra]
    result = subprocess.run(command, capture_output=True, text=True, cwd=out.parent)
    assert not check or result.returncode == 0, result.stderr
    return result


def _datasets(path: Path) -> dict[str, np.ndarray]:
    container = open_container(path)
    return {name: container.dataset(name).read() for name in container.names()}


def test_serial_workers_and_launcher_store_identical_predictions(tmp_path):
    params, checkpoint, raw = _setup(tmp_path)
    _predict(params, checkpoint, raw, tmp_path / "whole.h5")
    figures = json.loads(_predict(params, checkpoint, raw, tmp_path / "blocks.zarr", "--blockwise", "--workers", "2",
                                  "--block", "8", "16", "16").stdout)
    assert figures["blocks"] == 3 * 3 * 3 and figures["blocks_done_before"] == 0
    _predict(params, checkpoint, raw, tmp_path / "launched.zarr", "--blockwise", "--workers", "2",
             "--block", "16", "16", "16", "--launcher", "env MELECOLE_LAUNCHED=1")
    whole = _datasets(tmp_path / "whole.h5")
    assert set(whole) == {"boundary", "affinities", "predicted_affinities"}
    assert whole["boundary"].dtype == np.uint8 and whole["affinities"].shape == (9, 20, 40, 36)
    assert len(np.unique(whole["affinities"])) > 10  # real predictions, not a constant
    for name in ("blocks.zarr", "launched.zarr"):
        other = _datasets(tmp_path / name)
        for key, values in whole.items():
            np.testing.assert_array_equal(other[key], values, err_msg=f"{name}:{key}")
    boundary = open_container(tmp_path / "blocks.zarr").dataset("boundary")
    assert boundary.voxel_size == (8.0, 8.0, 8.0) and boundary.chunks == (8, 8, 8)
    assert not list(tmp_path.glob(".*blockwise")) and not list(tmp_path.glob(".*partial*"))


def test_embedding_on_request_as_float16(tmp_path):
    params, checkpoint, raw = _setup(tmp_path, shape=(16, 16, 16))
    _predict(params, checkpoint, raw, tmp_path / "p.zarr", "--embedding")
    embedding = open_container(tmp_path / "p.zarr").dataset("embedding")
    assert embedding.dtype == np.float16 and embedding.shape == (4, 16, 16, 16)


def _blocks_written(store: Path) -> int:
    """Blocks of 8 x 16 x 16 written: their boundary chunks (8^3, four per block) on disk."""
    chunks = sum(1 for path in (store / "boundary").rglob("*") if path.is_file() and path.name != "zarr.json")
    return chunks // 4


def test_a_killed_run_resumes_with_its_unfinished_blocks_only(tmp_path):
    params, checkpoint, raw = _setup(tmp_path, shape=(32, 48, 48))
    out = tmp_path / "p.zarr"
    _predict(params, checkpoint, raw, tmp_path / "reference.zarr", "--block", "8", "16", "16")
    command = [*MELECOLE, "predict", "--params", str(params), "--checkpoint", str(checkpoint), "--raw", f"{raw}:raw",
               "--out", str(out), "--quiet", "--blockwise", "--block", "8", "16", "16"]
    process = subprocess.Popen(command, cwd=tmp_path, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / ".p.partial.zarr"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not partial.exists() or _blocks_written(partial) < 6):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = _blocks_written(partial)
    assert 6 <= written < 36, f"kill came too late or too early ({written} of 36 blocks)"
    assert not out.exists()
    figures = json.loads(_predict(params, checkpoint, raw, out, "--blockwise", "--block", "8", "16", "16").stdout)
    assert figures["resumed"] and figures["blocks"] == 36
    assert written - 1 <= figures["blocks_done_before"] <= written  # the block being written may be redone
    reference = _datasets(tmp_path / "reference.zarr")
    for key, values in _datasets(out).items():
        np.testing.assert_array_equal(values, reference[key], err_msg=key)


def _peak_after(command: list[str], cwd: Path) -> int:
    subprocess.run(command, check=True, cwd=cwd, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB, the largest child so far


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_volume(tmp_path):
    # Children's peaks are reported as a running maximum: run the small volume first.
    peaks = {}
    for name, shape in (("small", (24, 96, 96)), ("large", (48, 192, 192))):  # 8x the voxels
        folder = tmp_path / name
        folder.mkdir()
        params, checkpoint, raw = _setup(folder, shape=shape, **{"predict.chunks": [16, 32, 32]})
        command = [*MELECOLE, "predict", "--params", str(params), "--checkpoint", str(checkpoint),
                   "--raw", f"{raw}:raw", "--out", str(folder / "p.zarr"), "--quiet", "--block", "16", "64", "64"]
        peaks[name] = _peak_after(command, folder)
    assert peaks["large"] <= 1.25 * peaks["small"], peaks


def test_nan_raw_is_refused_in_one_line_before_any_work(tmp_path):
    params, checkpoint, _ = _setup(tmp_path, shape=(16, 16, 16))
    raw = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    raw[3, 4, 5] = np.nan
    raw[9, 0, 0] = np.inf
    write_volumes(tmp_path / "nan.h5", {"raw": raw})
    result = _predict(params, checkpoint, tmp_path / "nan.h5", tmp_path / "p.zarr", check=False)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "2 NaN or infinite voxels" in message and "(3, 4, 5)" in message and "(16, 16, 16)" in message
    assert not (tmp_path / "p.zarr").exists() and not list(tmp_path.glob(".p*"))


def test_bad_blocks_and_outputs_are_refused(tmp_path):
    params, checkpoint, raw = _setup(tmp_path, shape=(16, 16, 16))
    result = _predict(params, checkpoint, raw, tmp_path / "p.zarr", "--block", "8", "12", "8", check=False)
    assert result.returncode == 2 and "multiple of the output chunks (8, 8, 8)" in result.stderr
    result = _predict(params, checkpoint, raw, tmp_path / "p.h5", "--workers", "2", check=False)
    assert result.returncode == 2 and "name the output *.zarr" in result.stderr
    (tmp_path / "notes.txt").write_text("not a volume")
    result = _predict(params, checkpoint, tmp_path / "notes.txt", tmp_path / "p.zarr", check=False)
    assert result.returncode == 2 and "notes.txt" in result.stderr and "Traceback" not in result.stderr
