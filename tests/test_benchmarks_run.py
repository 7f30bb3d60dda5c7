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
