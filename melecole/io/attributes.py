"""Attribute values as plain JSON types (str, numbers, bools, lists, dicts), whatever stored them."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from melecole.errors import MelecoleError


def to_plain(value):
    """numpy scalars become Python numbers, arrays and tuples lists, bytes text; recursively."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return to_plain(value.item())
    if isinstance(value, (np.ndarray, list, tuple)):
        return [to_plain(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    return value


def plain_attrs(attrs: Mapping) -> dict:
    """A plain dict copy of an HDF5 or zarr attribute mapping."""
    return {str(key): to_plain(value) for key, value in attrs.items()}


def json_attrs(values: Mapping, name: str) -> dict:
    """``values`` made plain, or an error naming the first key whose value JSON cannot hold."""
    plain = {}
    for key, value in values.items():
        plain[str(key)] = to_plain(value)
        try:
            json.dumps(plain[str(key)])
        except (TypeError, ValueError):
            raise MelecoleError(f"{name}: attribute '{key}' = {value!r} is not a JSON value "
                                "(str, number, bool, list, dict)") from None
    return plain
