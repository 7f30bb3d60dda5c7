"""Every random-number state of a training process, as plain values ``weights_only`` loading accepts.

``torch.load(..., weights_only=True)`` rejects numpy arrays and arbitrary objects, so the states
are stored as dicts, lists, ints and tensors and turned back into what each library wants on
restore. Resuming from them continues every random stream exactly where it stopped.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def _plain(value):
    # numpy scalars and arrays inside a bit-generator state -> Python ints, floats and lists.
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def capture(generator: np.random.Generator | None = None) -> dict:
    """The random states of this process: python, numpy's legacy global, torch CPU and CUDA, and ``generator``.

    Returns:
        ``{"python", "numpy_global", "torch", "cuda", "generator"}``; ``cuda`` is a list of
        byte tensors (empty without CUDA), ``generator`` the bit-generator state or None.
    """
    version, internal, gauss = random.getstate()
    legacy = np.random.get_state(legacy=False)
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy_global": _plain(legacy),
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "generator": _plain(generator.bit_generator.state) if generator is not None else None,
    }


def restore(state: dict, generator: np.random.Generator | None = None) -> None:
    """Puts back what :func:`capture` took, including ``generator``'s position."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    legacy = dict(state["numpy_global"])
    legacy["state"] = {"key": np.asarray(legacy["state"]["key"], dtype=np.uint32), "pos": legacy["state"]["pos"]}
    np.random.set_state(legacy)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None:
        if state["generator"] is None:
            raise ValueError("the saved random state holds no generator state to restore")
        generator.bit_generator.state = state["generator"]
