"""benchmarks/evaluate.py runs on a tiny pair and agrees with scikit-image (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_evaluate_benchmark_reports_every_run_and_agrees_with_skimage():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "evaluate.py"), "--shape", "6", "40", "48",
                             "--labels", "12", "--slab", "1000", "--seed", "3"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)

    assert figures["voxels"] == 6 * 40 * 48 and figures["max_id"] == 2**63
    assert figures["labels"]["ground_truth"] >= 2 and 0 < figures["unlabelled_fraction"] < 0.5
    for run in ("cli", "in_memory", "skimage"):
        assert figures[run]["seconds"] >= 0 and figures[run]["voxels_per_second"] > 0, run
        assert set(figures[run]["metrics"]) == {"vi_split", "vi_merge", "arand"}, run
        assert figures[run]["peak_process_mib"] > 0, run
    assert figures["in_memory"]["slab_voxels"] == 1000
    # Ours streamed from disk and in memory are the same numbers; skimage's agree to rounding.
    assert figures["cli"]["metrics"] == figures["in_memory"]["metrics"]
    assert figures["max_abs_difference_vs_skimage"]["in_memory"] < 1e-9
    assert figures["max_abs_difference_vs_skimage"]["cli"] < 1e-9
    assert figures["in_memory"]["metrics"]["vi_split"] > 0.05 and figures["in_memory"]["metrics"]["vi_merge"] > 0.05
    assert figures["skimage"]["relabelled"] and figures["skimage"]["raw_ids_error"]
    assert figures["speed_ratio_in_memory_to_skimage"] > 0 and figures["speed_ratio_cli_to_skimage"] > 0
    assert figures["cores"] >= 1 and "before" in figures["load_average_1min"]
