"""Checkpoints that carry the model's constructor arguments and the config, written atomically.

Two kinds: the final model checkpoint (``save_checkpoint`` / ``load_model``: weights, constructor
arguments, params and facts such as the calibrated threshold), and training states
(``save_state`` / ``read_state``: everything needed to resume a run exactly), kept as
``checkpoints/<stem>-step-NNNNNN.pt`` beside the final checkpoint ``<stem>.pt``. Both hold only
tensors and plain Python values, so both load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from melecole.errors import MelecoleError
from melecole.io import atomic_output
from melecole.models import build_model

FORMAT = "melecole-checkpoint-1"
STATE_FORMAT = "melecole-training-state-1"


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


def _load_safely(path: str | Path, expected_format: str, what: str) -> dict:
    """``torch.load(weights_only=True)`` onto the CPU, with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MelecoleError(f"{path}: {what} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise MelecoleError(f"{path}: not a readable {what} ({type(error).__name__}: {error})") from None
    found = state.get("format") if isinstance(state, dict) else None
    if found != expected_format:
        raise MelecoleError(f"{path}: not a {what} (format {found!r})")
    return state


def read_checkpoint(path: str | Path) -> dict:
    """Loads a checkpoint dictionary safely (``weights_only=True``) onto the CPU.

    ``path`` may name a shipped model, ``zoo:<name>`` (verified by its checksum first).
    """
    from melecole.zoo import resolve_checkpoint

    return _load_safely(resolve_checkpoint(path), FORMAT, "melecole checkpoint")


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


def load_initial_weights(model: torch.nn.Module, model_name: str, address: str | Path) -> None:
    """Copies a checkpoint's weights into ``model``, built from the current params, to fine-tune it.

    Raises:
        MelecoleError: naming the file and every model setting that differs, if the checkpoint's
            architecture is not the one ``model`` was built with.
    """
    state = read_checkpoint(address)
    ours = {"name": model_name, **dict(model.constructor_args)}
    theirs = {"name": state["model_name"], **state["model_args"]}
    differing = [f"{key} {theirs.get(key)!r} there, {ours.get(key)!r} here"
                 for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]
    if differing:
        raise MelecoleError(f"{address}: cannot start from this checkpoint, its model differs from params' model "
                            f"({'; '.join(differing)}); set the model.* keys to the checkpoint's")
    model.load_state_dict(state["state_dict"])


def save_state(path: str | Path, state: dict) -> None:
    """Writes a training state (plain values and tensors) to a temporary file, syncs it and renames it.

    The sync makes the renamed file complete even after a power cut, not only after a killed
    process: the periodic checkpoints are what a resumed run trusts.
    """
    with atomic_output(path) as tmp:
        torch.save({"format": STATE_FORMAT, **state}, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())


def read_state(path: str | Path) -> dict:
    """Loads a training state written by :func:`save_state` (``weights_only=True``, onto the CPU)."""
    return _load_safely(path, STATE_FORMAT, "melecole training state")


def checkpoint_folder(final: str | Path) -> Path:
    """The folder of the periodic and diagnostic checkpoints of a run writing ``final``."""
    return Path(final).parent / "checkpoints"


def periodic_path(final: str | Path, step: int) -> Path:
    """``checkpoints/<stem>-step-000200.pt`` beside ``final``."""
    return checkpoint_folder(final) / f"{Path(final).stem}-step-{step:06d}.pt"


def nonfinite_path(final: str | Path, step: int) -> Path:
    """``checkpoints/<stem>-nonfinite-step-000017.pt``: the state a non-finite loss left behind."""
    return checkpoint_folder(final) / f"{Path(final).stem}-nonfinite-step-{step:06d}.pt"


def periodic_checkpoints(final: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the periodic checkpoints of the run writing ``final``, oldest first."""
    folder = checkpoint_folder(final)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(Path(final).stem)}-step-(\d+)\.pt")
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := pattern.fullmatch(path.name))]
    return sorted(found)


def prune_checkpoints(final: str | Path, keep: int) -> None:
    """Deletes all but the ``keep`` newest periodic checkpoints of ``final``'s run."""
    for _, path in periodic_checkpoints(final)[:-keep] if keep > 0 else periodic_checkpoints(final):
        path.unlink(missing_ok=True)


def remove_checkpoints(final: str | Path) -> None:
    """Deletes every periodic checkpoint of ``final``'s run and temporary files a killed write left."""
    prune_checkpoints(final, 0)
    folder = checkpoint_folder(final)
    if folder.is_dir():
        for leftover in folder.glob(f".{Path(final).stem}-step-*.pt.*.tmp"):
            leftover.unlink(missing_ok=True)
