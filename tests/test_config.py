"""Config validation: the committed params.yaml is complete and valid; mistakes are named."""

from __future__ import annotations

import pytest
import yaml

from melecole.config import Params, load_params, params_as_dict, params_from_dict
from melecole.errors import MelecoleError
from tests.conftest import REPO


def _keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _keys(value, f"{prefix}{key}.")
    return keys


def test_committed_params_are_valid_and_name_every_key():
    params = load_params(REPO / "params.yaml")
    written = yaml.safe_load((REPO / "params.yaml").read_text())
    assert _keys(written) == _keys(params_as_dict(Params()))
    assert params.data.dataset == "flyem-fib-small"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"stepz": 3}}, "unknown key 'train.stepz'"),
        ({"trian": {}}, "unknown key 'trian'"),
        ({"train": {"steps": "many"}}, "'train.steps'"),
        ({"train": {"steps": 0}}, "'train.steps'"),
        ({"train": {"loss": {"delta_v": 2.0, "delta_d": 1.0}}}, "must exceed"),
        ({"data": {"dataset": "cremi"}}, "'data.dataset'"),
        ({"segment": {"offsets": [[0, 0, 0], [1, 0, 0]], "attractive": 1}}, "(0, 0, 0)"),
        ({"predict": {"patch": [16, 16, 16], "overlap": [8, 4, 4]}}, "half"),
        ({"predict": {"patch": [48, 48, 48], "overlap": [8, 12, 12]}}, "longest segment.offsets step"),
    ],
)
def test_invalid_params_are_named(raw, expected):
    with pytest.raises(MelecoleError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        params_from_dict(raw, "params.yaml")


def test_load_params_reports_missing_and_broken_files(tmp_path):
    with pytest.raises(MelecoleError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(MelecoleError, match="not valid YAML"):
        load_params(broken)


def test_params_round_trip_through_plain_dict():
    params = load_params(REPO / "params.yaml")
    assert params_from_dict(params_as_dict(params)) == params
