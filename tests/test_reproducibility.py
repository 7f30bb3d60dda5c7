"""Figures that reproduce on another machine (issue 14): with MELECOLE_PORTABLE_KERNELS=1 the
``melecole`` command pins CPU kernels every x86-64 CPU with AVX2 runs alike, so this machine trains
the weights an AVX2-only one does."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from melecole.reproducibility import PINNED, PORTABLE, pin_cpu_kernels
from tests.conftest import REPO, tiny_params_dict


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())


FLAGS = _cpu_flags()

# What an AVX2-only CPU's own dispatch picks, asked for here through each library's ISA ceiling.
# MKL_ENABLE_INSTRUCTIONS, not the pinned MKL_CBWR: it is how MKL would dispatch there, and a
# user's MKL_CBWR would rightly win over the pin.
AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def test_pins_every_library_where_nothing_is_set():
    environ = {"PATH": "/bin", PORTABLE: "1"}
    assert pin_cpu_kernels(environ, "x86_64") == PINNED
    assert environ == {"PATH": "/bin", PORTABLE: "1", **PINNED}
    assert set(PINNED) == {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR"}


def test_the_users_own_settings_win():
    environ = {"MKL_CBWR": "AVX512", "ATEN_CPU_CAPABILITY": "default", PORTABLE: "1"}
    assert pin_cpu_kernels(environ, "AMD64") == {"ONEDNN_MAX_CPU_ISA": PINNED["ONEDNN_MAX_CPU_ISA"]}
    assert environ["MKL_CBWR"] == "AVX512" and environ["ATEN_CPU_CAPABILITY"] == "default"


@pytest.mark.parametrize("value, pinned", [("1", True), ("yes", True), ("0", False), ("", False), (None, False)])
def test_portable_kernels_are_opt_in(value, pinned):
    environ = {} if value is None else {PORTABLE: value}
    before = set(environ)
    assert bool(pin_cpu_kernels(environ, "x86_64")) is pinned
    assert set(environ) == (before | set(PINNED) if pinned else before)


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "ppc64le"])
def test_other_architectures_are_left_alone(machine):
    environ = {PORTABLE: "1"}
    assert pin_cpu_kernels(environ, machine) == {} and environ == {PORTABLE: "1"}


def _train(tmp_path: Path, params: Path, data: Path, name: str, extra: dict[str, str]) -> dict:
    # Nothing inherited: this process may have been pinned already (tests call cli.main in-process).
    env = {k: v for k, v in os.environ.items()
           if k not in {*PINNED, *AVX2_MACHINE, PORTABLE, "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}}
    env.update(extra, PYTHONPATH=str(REPO))
    out = tmp_path / name / "checkpoint.pt"
    command = [sys.executable, "-m", "melecole.cli", "train", "--params", str(params), "--data", str(data),
               "--out", str(out), "--fresh"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True)["state_dict"]


def _same(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.skipif(not {"avx2", "fma"} <= FLAGS, reason="the pinned kernels need an x86-64 CPU with AVX2 (and Linux "
                                                          "to read its flags)")
def test_the_command_trains_the_weights_of_an_avx2_machine(tmp_path, prepared):
    params = tmp_path / "params.yaml"
    # Batch 2: every 3x3x3 convolution goes to oneDNN (at batch 1 these small ones do not), the
    # transposed ones to MKL; one thread each, so the three runs share the cores without waiting.
    params.write_text(yaml.safe_dump(tiny_params_dict(**{
        "train.steps": 3, "train.batch_size": 2, "train.val_every": 1000, "train.checkpoint_every": 0,
        "train.threads": 1, "train.augment": {"enabled": False}})))
    runs = {"here": {PORTABLE: "1"}, "avx2-machine": {PORTABLE: "1", **AVX2_MACHINE}, "native": {}}
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(_train, tmp_path, params, prepared, name, extra) for name, extra in runs.items()}
        weights = {name: future.result() for name, future in futures.items()}
    assert _same(weights["here"], weights["avx2-machine"])
    if "avx512f" in FLAGS:
        # The control: this training does depend on the kernels, so the equality above is the pin's doing.
        assert not _same(weights["here"], weights["native"])
