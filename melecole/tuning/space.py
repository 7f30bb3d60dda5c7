"""The search-space file of ``melecole tune``: what every trial fixes and what Optuna samples.

A YAML file with up to five sections (only ``space`` is required)::

    fixed:                      # overrides of params.yaml applied to every trial (nested or dotted keys)
      train: {steps: 600, processes: 2}
    space:                      # dotted params.yaml key -> one distribution
      train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.embedding_dim: {type: categorical, choices: [8, 16, 32]}
      train.loss.delta_d: {type: float, low: 1.0, high: 3.0, step: 0.5}
      train.warmup_steps: {type: int, low: 0, high: 200, step: 50}
    pruning: {enabled: true, startup_trials: 3, warmup_steps: 0}
    sampler: {name: tpe, seed: null}
    enqueue:                    # trials run first, e.g. the current defaults (keys of space)
      - {train.lr: 0.001, model.embedding_dim: 16}

Everything is checked before the first trial: unknown sections, keys that params.yaml does
not have, malformed distributions, and every bound and choice on top of params.yaml + fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

from melecole.config import params_from_dict, read_yaml
from melecole.errors import MelecoleError
from melecole.experiments import merge

SECTIONS = ("fixed", "space", "pruning", "sampler", "enqueue")
Scalar = Union[None, StrictBool, StrictInt, float, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatDimension(_Strict):
    """A real number in [low, high], uniform or log-uniform, optionally on a grid of ``step``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> FloatDimension:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self

    def extremes(self) -> list:
        return [self.low, self.high]

    def contains(self, value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


class IntDimension(_Strict):
    """An integer in [low, high], every ``step``-th, or log-uniform."""

    type: Literal["int"]
    low: StrictInt
    high: StrictInt
    log: bool = False
    step: StrictInt = Field(1, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> IntDimension:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"log needs low >= 1 (got {self.low})")
        if self.log and self.step != 1:
            raise ValueError("log and step cannot be combined")
        return self

    def extremes(self) -> list:
        return [self.low, self.high]

    def contains(self, value: object) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
                and (value - self.low) % self.step == 0)


class CategoricalDimension(_Strict):
    """One of a list of scalars (numbers, strings, booleans, null)."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> CategoricalDimension:
        seen = [(type(c), c) for c in self.choices]
        if len(set(seen)) != len(seen):
            raise ValueError(f"choices {self.choices} repeat a value")
        return self

    def extremes(self) -> list:
        return list(self.choices)

    def contains(self, value: object) -> bool:
        # True == 1 in Python; a choice matches only a value of its own type.
        return any(type(choice) is type(value) and choice == value for choice in self.choices)


Dimension = Annotated[Union[FloatDimension, IntDimension, CategoricalDimension], Field(discriminator="type")]
_DIMENSION_TYPES = ("float", "int", "categorical")


class PruningConfig(_Strict):
    """The median rule (see :mod:`melecole.tuning.pruning`)."""

    enabled: bool = True
    startup_trials: int = Field(3, ge=0, description="completed trials needed at a step before pruning there")
    warmup_steps: int = Field(0, ge=0, description="no pruning at validation steps below this")


class SamplerConfig(_Strict):
    """Optuna's sampler: TPE (default), random or NSGA-II; a seed only makes one worker repeatable."""

    name: Literal["tpe", "random", "nsga2"] = "tpe"
    seed: int | None = None


class _DimensionHolder(_Strict):
    dimension: Dimension


@dataclass(frozen=True)
class SearchSpace:
    """A validated search-space file."""

    fixed: dict
    dimensions: dict[str, FloatDimension | IntDimension | CategoricalDimension]
    pruning: PruningConfig = PruningConfig()
    sampler: SamplerConfig = SamplerConfig()
    enqueue: list[dict] = field(default_factory=list)

    def definition(self) -> dict:
        """``fixed`` and the distributions as plain data: what a resumed study must match."""
        return {"fixed": self.fixed,
                "space": {key: dim.model_dump(mode="json") for key, dim in self.dimensions.items()}}


def nest(values: dict) -> dict:
    """``{"train.lr": 0.01}`` -> ``{"train": {"lr": 0.01}}``; nested mappings may mix in dotted keys."""
    tree: dict = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = nest(value)
        *parents, leaf = str(key).split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = merge(node[leaf], value) if isinstance(value, dict) and isinstance(node.get(leaf), dict) else value
    return tree


def leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    """Dotted keys of every non-mapping value of a nested mapping."""
    keys: set[str] = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            keys |= leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def trial_params(base: dict, space: SearchSpace, values: dict) -> dict:
    """params.yaml of one trial: ``base``, then ``fixed``, then the sampled ``values`` (dotted keys)."""
    return merge(merge(base, space.fixed), nest(values))


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"] if p not in _DIMENSION_TYPES and p != "dimension")
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"unknown field '{where}'" if item["type"] == "extra_forbidden" else
                     f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_dimension(spec: object, where: str) -> FloatDimension | IntDimension | CategoricalDimension:
    """One ``{type: ..., ...}`` mapping; ``where`` names it in errors ("file: space.key")."""
    if not isinstance(spec, dict):
        raise MelecoleError(f"{where}: expected a mapping such as {{type: float, low: 0.1, high: 1}}")
    if spec.get("type") not in _DIMENSION_TYPES:
        raise MelecoleError(f"{where}: type must be one of {', '.join(_DIMENSION_TYPES)} (got {spec.get('type')!r})")
    try:
        return _DimensionHolder.model_validate({"dimension": spec}).dimension
    except ValidationError as error:
        raise MelecoleError(f"{where}: {_validation_message(error)}") from None


def _section(raw: dict, name: str, kind: type, path: Path):
    value = raw.get(name)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise MelecoleError(f"{path}: section '{name}' must be a {'mapping' if kind is dict else 'list'}")
    return value


def _settings(model: type[_Strict], value: dict, path: Path, name: str):
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise MelecoleError(f"{path}: {name}: {_validation_message(error)}") from None


def read_space(path: str | Path, base: dict, base_source: str = "params.yaml") -> SearchSpace:
    """Reads and checks a search-space file against a complete params dictionary.

    Args:
        path: the YAML file.
        base: every parameter (``params_as_dict`` of the loaded params.yaml).
        base_source: names ``base`` in error messages.

    Raises:
        MelecoleError: one line naming the file and the offending section or key.
    """
    path = Path(path)
    raw = read_yaml(path, "search-space file")
    if not isinstance(raw, dict):
        raise MelecoleError(f"{path}: expected a mapping with sections {', '.join(SECTIONS)}")
    for name in raw:
        if name not in SECTIONS:
            raise MelecoleError(f"{path}: unknown section '{name}' (expected {', '.join(SECTIONS)})")
    fixed = nest(_section(raw, "fixed", dict, path))
    with_fixed = merge(base, fixed)
    params_from_dict(with_fixed, f"{path}: fixed on top of {base_source}")
    space = _section(raw, "space", dict, path)
    if not space:
        raise MelecoleError(f"{path}: section 'space' is missing or empty; name at least one parameter to search")
    leaves, fixed_leaves = leaf_keys(base), leaf_keys(fixed)
    dimensions = {}
    for key, spec in space.items():
        where = f"{path}: space.{key}"
        if key not in leaves:
            section = any(leaf.startswith(f"{key}.") for leaf in leaves)
            raise MelecoleError(f"{where}: '{key}' is a section of params.yaml, name one of its parameters"
                                if section else f"{where}: unknown key '{key}' (not a parameter of params.yaml)")
        if key in fixed_leaves:
            raise MelecoleError(f"{where}: '{key}' is both fixed and searched")
        dimension = parse_dimension(spec, where)
        for value in dimension.extremes():
            params_from_dict(merge(with_fixed, nest({key: value})), f"{where} = {value!r}")
        dimensions[key] = dimension
    enqueue = _section(raw, "enqueue", list, path)
    for index, entry in enumerate(enqueue):
        where = f"{path}: enqueue[{index}]"
        if not isinstance(entry, dict) or not entry:
            raise MelecoleError(f"{where}: expected a mapping of searched keys to values")
        for key, value in entry.items():
            if key not in dimensions:
                raise MelecoleError(f"{where}: '{key}' is not a key of section 'space'")
            if not dimensions[key].contains(value):
                raise MelecoleError(f"{where}: {key} = {value!r} is outside its distribution")
        params_from_dict(trial_params(base, SearchSpace(fixed, dimensions), entry), where)
    return SearchSpace(fixed, dimensions, _settings(PruningConfig, _section(raw, "pruning", dict, path), path, "pruning"),
                       _settings(SamplerConfig, _section(raw, "sampler", dict, path), path, "sampler"),
                       [dict(entry) for entry in enqueue])
