"""Named experiments: YAML overrides of params.yaml, turned into `dvc exp run -S` arguments."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from melecole.config import load_params, params_as_dict, params_from_dict, read_yaml
from melecole.errors import MelecoleError


def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    items = []
    for key, value in tree.items():
        if isinstance(value, dict):
            items.extend(_leaves(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied recursively (mappings merge, everything else replaces)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_overrides(path: str | Path, params_path: str | Path = "params.yaml") -> dict:
    """Reads an experiment file and checks that it validates on top of ``params_path``."""
    overrides = read_yaml(path, "experiment file")
    if not isinstance(overrides, dict):
        raise MelecoleError(f"{path}: expected a mapping of parameter overrides")
    base = params_as_dict(load_params(params_path))
    params_from_dict(merge(base, overrides), f"{path} on top of {params_path}")
    return overrides


def dvc_set_arguments(overrides: dict) -> list[str]:
    """``-S key=value`` pairs for ``dvc exp run``; values in compact JSON (valid YAML, no spaces)."""
    arguments = []
    for key, value in _leaves(overrides):
        arguments += ["-S", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    return arguments
