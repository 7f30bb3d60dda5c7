"""Experiment files: each validates on top of params.yaml and becomes `dvc exp run -S` arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from melecole.errors import MelecoleError
from melecole.experiments import dvc_set_arguments, merge, read_overrides
from tests.conftest import REPO


def _override_files() -> list[Path]:
    # Search spaces for `melecole tune` (a top-level `space:`) are checked in tests/test_tune_space.py.
    return [path for path in sorted((REPO / "experiments").glob("*.yaml"))
            if "space" not in (yaml.safe_load(path.read_text()) or {})]


@pytest.mark.parametrize("path", _override_files(), ids=lambda p: p.name)
def test_committed_experiments_validate(path):
    overrides = read_overrides(path, REPO / "params.yaml")
    assert overrides


def test_arguments_parse_back_to_the_overrides():
    overrides = {"train": {"lr": 0.0005, "device": "cpu", "patch": [16, 64, 64]}, "seed": 3}
    arguments = dvc_set_arguments(overrides)
    assert arguments[::2] == ["-S"] * 4
    parsed = {}
    for pair in arguments[1::2]:
        key, value = pair.split("=", 1)
        assert " " not in pair
        parsed[key] = yaml.safe_load(value)  # DVC reads -S values as YAML
    assert parsed == {"train.lr": 0.0005, "train.device": "cpu", "train.patch": [16, 64, 64], "seed": 3}


def test_unknown_key_in_experiment_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n")
    with pytest.raises(MelecoleError, match="unknown key 'train.epochs'"):
        read_overrides(bad, REPO / "params.yaml")


def test_merge_is_deep_and_pure():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    merged = merge(base, {"a": {"c": 3}, "d": [2]})
    assert merged == {"a": {"b": 1, "c": 3}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}
