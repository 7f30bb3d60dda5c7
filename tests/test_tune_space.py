"""The search-space file of `melecole tune`: parsing, and one-line errors naming the file and key."""

from __future__ import annotations

import pytest
import yaml

from melecole.config import Params, load_params, params_as_dict, params_from_dict
from melecole.errors import MelecoleError
from melecole.tuning.space import (CategoricalDimension, FloatDimension, IntDimension, leaf_keys, nest, read_space,
                                   trial_params)
from tests.conftest import REPO

BASE = params_as_dict(Params())


def _write(tmp_path, content: dict | str):
    path = tmp_path / "space.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def test_a_complete_file_is_read(tmp_path):
    path = _write(tmp_path, {
        "fixed": {"train": {"steps": 20}, "model.base_channels": 8},
        "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                  "model.embedding_dim": {"type": "categorical", "choices": [8, 16]},
                  "train.loss.delta_d": {"type": "float", "low": 1.0, "high": 3.0, "step": 0.5},
                  "train.warmup_steps": {"type": "int", "low": 0, "high": 100, "step": 25}},
        "pruning": {"startup_trials": 1, "warmup_steps": 10},
        "sampler": {"name": "random", "seed": 3},
        "enqueue": [{"train.lr": 0.001, "model.embedding_dim": 16}],
    })
    space = read_space(path, BASE)
    assert space.fixed == {"train": {"steps": 20}, "model": {"base_channels": 8}}
    assert space.dimensions == {
        "train.lr": FloatDimension(type="float", low=1e-4, high=1e-2, log=True),
        "model.embedding_dim": CategoricalDimension(type="categorical", choices=[8, 16]),
        "train.loss.delta_d": FloatDimension(type="float", low=1.0, high=3.0, step=0.5),
        "train.warmup_steps": IntDimension(type="int", low=0, high=100, step=25)}
    assert (space.pruning.startup_trials, space.pruning.warmup_steps, space.pruning.enabled) == (1, 10, True)
    assert (space.sampler.name, space.sampler.seed) == ("random", 3)
    merged = trial_params(BASE, space, {"train.lr": 0.005, "model.embedding_dim": 8})
    params = params_from_dict(merged)
    assert (params.train.lr, params.train.steps, params.model.embedding_dim, params.model.base_channels) == \
        (0.005, 20, 8, 8)
    assert space.definition()["space"]["train.lr"] == {"type": "float", "low": 1e-4, "high": 1e-2, "log": True,
                                                      "step": None}


SEARCH_FILES = sorted(p for p in (REPO / "experiments").glob("*.yaml") if "space" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("path", SEARCH_FILES, ids=lambda p: p.name)
def test_committed_search_files_are_valid(path):
    space = read_space(path, params_as_dict(load_params(REPO / "params.yaml")), "params.yaml")
    assert space.dimensions


def test_the_shipped_example_searches_three_keys():
    assert REPO / "experiments" / "tune-example.yaml" in SEARCH_FILES
    space = read_space(REPO / "experiments" / "tune-example.yaml", BASE)
    assert set(space.dimensions) == {"train.lr", "model.embedding_dim", "train.loss.delta_d"}


def test_nest_and_leaf_keys():
    assert nest({"a.b": 1, "a": {"c.d": 2}, "e": 3}) == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert leaf_keys({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b", "a.c.d", "e"}


@pytest.mark.parametrize("content, message", [
    ({"space": {"train.lrr": {"type": "float", "low": 0.1, "high": 1}}}, "space.train.lrr: unknown key 'train.lrr'"),
    ({"space": {"train.loss": {"type": "float", "low": 0.1, "high": 1}}}, "space.train.loss: 'train.loss' is a section"),
    ({"space": {"train.lr": {"type": "uniform", "low": 0.1, "high": 1}}}, "space.train.lr: type must be one of"),
    ({"space": {"train.lr": {"type": "float", "low": 1, "high": 0.1}}}, "space.train.lr: low (1.0) must be below high"),
    ({"space": {"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, "space.train.lr: log needs low > 0"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 1, "lg": True}}}, "space.train.lr: unknown field 'lg'"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1}}}, "space.train.lr: high: Field required"),
    ({"space": {"train.steps": {"type": "int", "low": 1.5, "high": 4}}}, "space.train.steps: low:"),
    ({"space": {"model.norm": {"type": "categorical", "choices": []}}}, "space.model.norm: choices:"),
    ({"space": {"model.norm": {"type": "categorical", "choices": ["group", "group"]}}}, "repeat a value"),
    ({"space": {"model.norm": {"type": "categorical", "choices": ["group", "layer"]}}}, "space.model.norm = 'layer'"),
    ({"space": {"train.lr": {"type": "float", "low": -1, "high": 1}}}, "space.train.lr = -1.0"),
    ({"space": {"train.lr": [0.1, 1]}}, "space.train.lr: expected a mapping"),
    ({"space": {}}, "section 'space' is missing or empty"),
    ({"spaces": {}}, "unknown section 'spaces'"),
    ({"fixed": {"train": {"stepz": 3}}, "space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}},
     "fixed on top of params.yaml: unknown key 'train.stepz'"),
    ({"fixed": {"train": {"lr": 0.1}}, "space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}},
     "'train.lr' is both fixed and searched"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}, "pruning": {"startup_trials": -1}},
     "pruning: startup_trials:"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}, "sampler": {"name": "cmaes"}}, "sampler: name:"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}, "enqueue": [{"train.steps": 3}]},
     "enqueue[0]: 'train.steps' is not a key of section 'space'"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}, "enqueue": [{"train.lr": 2.0}]},
     "enqueue[0]: train.lr = 2.0 is outside its distribution"),
    ({"space": {"train.loss.delta_d": {"type": "float", "low": 1.0, "high": 2.0}}, "fixed": {"train.loss.delta_v": 1.2}},
     "space.train.loss.delta_d = 1.0"),
])
def test_mistakes_name_the_file_and_key(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(MelecoleError) as error:
        read_space(path, BASE)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text, text
    assert "\n" not in text


def test_unreadable_files(tmp_path):
    with pytest.raises(MelecoleError, match="search-space file not found"):
        read_space(tmp_path / "missing.yaml", BASE)
    with pytest.raises(MelecoleError, match="expected a mapping with sections"):
        read_space(_write(tmp_path, "- a\n- b\n"), BASE)
