"""benchmarks/predict.py runs both sides on a tiny volume and reports comparable figures (no
timing is asserted: the machine is shared)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, tiny_params_dict

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("monai") is None,
                       reason="monai is not installed (benchmark-only: pip install -r requirements-benchmarks.txt)"),
]


def _run(*args: str) -> dict:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "predict.py"), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_predict_benchmark_compares_both_sides_on_the_same_outputs(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(**{"predict.chunks": [8, 16, 16], "model.affinity_head": True})))
    figures = _run("--params", str(params), "--shape", "20", "40", "36", "--repeats", "1")

    assert {"settings", "ours", "monai", "speed_ratio_ours_to_monai", "cpu_speed_ratio_ours_to_monai",
            "memory_ratio_ours_to_monai", "max_abs_difference", "difference", "meets_target", "cores",
            "load_average_1min"} <= set(figures)
    settings = figures["settings"]
    assert settings["voxels"] == 20 * 40 * 36 and settings["same_tile_grid"] is True
    assert settings["patch"] == [16, 16, 16] and settings["overlap"] == [4, 4, 4]
    for side in ("ours", "monai"):
        assert figures[side]["voxels_per_second"] > 0 and figures[side]["peak_total_mib"] > 0
    assert figures["speed_ratio_ours_to_monai"] > 0 and figures["memory_ratio_ours_to_monai"] > 0
    assert figures["speed_ratio_ours_to_monai"] == pytest.approx(
        figures["ours"]["voxels_per_second"] / figures["monai"]["voxels_per_second"], abs=1e-3)
    assert figures["meets_target"] == (figures["speed_ratio_ours_to_monai"] >= 1.0
                                       and figures["memory_ratio_ours_to_monai"] <= 1.0)
    # Same maths on both sides: at most one uint8 step (1/255) where a value sits on a rounding edge.
    assert set(figures["difference"]) == {"boundary", "affinities", "predicted_affinities"}
    assert figures["max_abs_difference"] <= 1 / 255 + 1e-6
    for name, difference in figures["difference"].items():
        assert difference["voxels_differing"] <= 0.001 * difference["values"], name
