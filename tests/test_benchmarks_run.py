"""The benchmark scripts still run and print their JSON (tiny settings; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_loader_benchmark_reports_rates_and_ratio():
    figures = _run("loader.py", "--patches", "3", "--steps", "1")
    assert set(figures["loader_patches_per_second"]) == {"0", "1", "2"}
    assert figures["train_step_patches_per_second"] > 0
    assert figures["meets_target"] == (figures["ratio_1_worker_to_train_step"] >= 3)
    assert "before" in figures["load_average_1min"]


def test_train_step_benchmark_reports_scaling():
    figures = _run("train_step.py", "--steps", "1", "--warmup", "0")
    assert set(figures["settings"]) == {"1_process", "1_process_1_thread", "2_processes"}
    assert len(figures["settings"]["2_processes"]["peak_rss_mb_per_process"]) == 2
    assert figures["scaling_2_vs_1_process"] > 0


def _tiny_params(tmp_path, **overrides) -> str:
    import yaml

    from tests.conftest import tiny_params_dict

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params_dict(**{"predict.chunks": [8, 16, 16], **overrides})))
    return str(path)


def test_predict_memory_benchmark_reports_both_sizes(tmp_path):
    figures = _run("predict_memory.py", "--params", _tiny_params(tmp_path), "--small", "8", "16", "16")
    assert figures["voxel_ratio"] == 8
    assert figures["large"]["peak_total_mib"] > 0 and figures["small"]["voxels_per_second"] > 0
    assert figures["peak_ratio_large_to_small"] == pytest.approx(
        figures["large"]["peak_total_mib"] / figures["small"]["peak_total_mib"], abs=1e-3)


def test_real_size_benchmark_runs_every_stage(tmp_path):
    from melecole.config import load_params
    from tests.predict_helpers import random_checkpoint

    params = _tiny_params(tmp_path, **{"data.synthetic": {"shape": [16, 32, 32], "neurites": 6},
                                       "segment.agglomeration.threshold": 0.5})
    checkpoint = random_checkpoint(load_params(params), tmp_path / "checkpoint.pt")
    figures = _run("real_size.py", "--checkpoint", str(checkpoint), "--params", params, "--shape", "16", "40", "48",
                   "--workers", "2", "--out", str(tmp_path / "real"))
    assert figures["voxels"] == 16 * 40 * 48
    assert figures["predict"]["figures"]["blocks"] >= 1 and figures["segment"]["figures"]["segments"] >= 1
    assert {"vi_split", "vi_merge", "vi_sum", "arand"} <= set(figures["evaluate"]["figures"])
    assert figures["segment"]["peak_process_gib"] > 0
