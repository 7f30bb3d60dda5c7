"""Checkpoints that carry the model's constructor arguments and the config, written atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from melecole.errors import MelecoleError
from melecole.io import atomic_output
from melecole.models import build_model

FORMAT = "melecole-checkpoint-1"


def save_checkpoint(path: str | Path, model: torch.nn.Module, params: dict, extra: dict | None = None) -> None:
    """Writes the model weights, ``model.constructor_args`` and the params dict.

    Everything stored is a tensor or a plain Python value, so the file loads with
    ``torch.load(..., weights_only=True)``.
    """
    state = {
        "format": FORMAT,
        "model_name": params["model"]["name"],
        "model_args": dict(model.constructor_args),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "params": params,
        "extra": extra or {},
    }
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: str | Path) -> dict:
    """Loads a checkpoint dictionary safely (``weights_only=True``) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise MelecoleError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise MelecoleError(f"{path}: not a readable melecole checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MelecoleError(f"{path}: not a melecole checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    return state


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict, dict]:
    """Rebuilds the model from a checkpoint.

    Returns:
        (model in eval mode on ``device``, the params dict it was trained with, extra facts such
        as the agglomeration threshold chosen on the validation volume).
    """
    state = read_checkpoint(path)
    model = build_model(state["model_name"], **state["model_args"])
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), state["params"], state["extra"]
