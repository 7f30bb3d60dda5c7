"""benchmarks/segment.py still runs and prints its JSON (tiny shape; no time is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_segment_benchmark_compares_ours_with_elf_and_runs_the_stage():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "segment.py"), "--shape", "12", "40", "40",
                             "--methods", "fast", "elf", "stage"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["voxels"] == 12 * 40 * 40 and figures["edges"] == 12 * figures["voxels"]
    assert set(figures["methods"]) == {"fast", "elf"}
    for method in figures["methods"].values():
        assert method["seconds"] > 0 and method["voxels_per_second"] > 0 and method["process_peak_mib"] > 0
        assert method["segments"] > 1 and set(method["scores"]) == {"vi_split", "vi_merge", "arand"}
    between = figures["between"]["fast~elf"]
    assert between["identical"] and between["vi_split"] == between["vi_merge"] == 0.0
    assert figures["speed_ratio_fast_to_elf"] == pytest.approx(
        figures["methods"]["elf"]["seconds"] / figures["methods"]["fast"]["seconds"], rel=0.01)
    stage = figures["stages"]["stage"]
    assert set(stage["stage_seconds"]) == {"mws-embedding", "agglomeration"} and stage["peak_process_mib"] > 0
    assert set(stage["segmentation_scores"]) == {"vi_split", "vi_merge", "arand"}
    assert "before" in figures["load_average_1min"]
