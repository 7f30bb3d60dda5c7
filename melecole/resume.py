"""Resuming a training run: which periodic checkpoint fits, what goes into one, and putting it back.

A periodic checkpoint is *compatible* with a new invocation when it was written with the same
parameters (every key of params.yaml), the same training and validation files (path, size,
modification time) and the same number of processes. ``resume="auto"`` continues from the
newest compatible one and otherwise starts afresh, deleting the stale checkpoints of that
output; ``"always"`` (``--resume``) insists on one; ``"never"`` (``--fresh``) discards them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from melecole import rng_state
from melecole.checkpoint import checkpoint_folder, periodic_checkpoints, read_state, remove_checkpoints
from melecole.errors import MelecoleError
from melecole.tracking import flatten
from melecole.training import TrainingResult

ResumeMode = Literal["auto", "always", "never"]


@dataclass
class TrainingParts:
    """The stateful pieces of one rank's training, as a checkpoint saves and restores them."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    rng: np.random.Generator
    ema: torch.optim.swa_utils.AveragedModel | None = None


def fingerprint(params: dict, files: list[Path], world_size: int) -> dict:
    """What must not change for a run to continue from a checkpoint."""
    described = []
    for path in files:
        stat = Path(path).stat()
        described.append({"path": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return {"params": params, "files": described, "world_size": int(world_size)}


def differences(saved: dict, current: dict) -> list[str]:
    """Names of what differs between two fingerprints (parameter keys, files, processes)."""
    old, new = flatten(saved["params"]), flatten(current["params"])
    found = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if saved["files"] != current["files"]:
        found.append("training files")
    if saved["world_size"] != current["world_size"]:
        found.append(f"processes ({saved['world_size']} then, {current['world_size']} now)")
    return found


def find_resumable(final: str | Path, current: dict, mode: ResumeMode = "auto") -> tuple[dict | None, str | None]:
    """The training state to continue from, and a note saying what was decided.

    Args:
        final: the final checkpoint path of the run (periodic ones live beside it).
        current: this invocation's :func:`fingerprint`.
        mode: ``"auto"``, ``"always"`` or ``"never"`` (see the module doc).

    Raises:
        MelecoleError: with ``"always"``, when there is no readable checkpoint or it does not fit.
    """
    if mode == "never":
        remove_checkpoints(final)
        return None, None
    unreadable = []
    for step, path in reversed(periodic_checkpoints(final)):
        try:
            state = read_state(path)
        except MelecoleError as error:
            unreadable.append(str(error))
            continue
        changed = differences(state["fingerprint"], current)
        if not changed:
            return state, f"resuming from {path} at step {step}"
        listed = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
        if mode == "always":
            raise MelecoleError(f"{path}: cannot resume, it was written with different {listed} "
                                "(use --fresh to start again)")
        remove_checkpoints(final)
        return None, f"starting afresh: {path} was written with different {listed}; removed it"
    if mode == "always":
        detail = f" ({unreadable[0]})" if unreadable else ""
        raise MelecoleError(f"{checkpoint_folder(final)}: no checkpoint of {Path(final).stem} to resume from{detail}")
    return None, None


def collect(parts: TrainingParts, result: TrainingResult, best: dict, rng_states: list[dict], extra: dict) -> dict:
    """The training state of a run at ``result.step``, as plain values and CPU tensors.

    Args:
        parts: rank 0's model, optimiser, scheduler, scaler and EMA.
        result: the loop's state.
        best: ``{"step", "metrics", "state"}`` of the best validation so far, or empty.
        rng_states: :func:`melecole.rng_state.capture` of every rank, in rank order.
        extra: more entries (params, fingerprint, MLflow run id, model name and arguments).
    """
    return {
        "step": result.step,
        "model": _cpu(parts.model.state_dict()),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "ema": _cpu(parts.ema.state_dict()) if parts.ema is not None else None,
        "loop": result.as_dict(),
        "best": {**best, "state": _cpu(best["state"])} if best else {},
        "rng": rng_states,
        **extra,
    }


def restore(parts: TrainingParts, state: dict, rank: int) -> TrainingResult:
    """Loads a state into ``parts`` (random states last, so nothing after draws from them).

    Returns:
        The loop state to continue from.
    """
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    if parts.ema is not None:
        if state.get("ema") is None:
            raise MelecoleError("the checkpoint holds no moving average of the weights to resume")
        parts.ema.load_state_dict(state["ema"])
    if rank >= len(state["rng"]):
        raise MelecoleError(f"the checkpoint holds random states of {len(state['rng'])} ranks, not of rank {rank}")
    rng_state.restore(state["rng"][rank], parts.rng)
    return TrainingResult.from_dict(state["loop"])


def for_other_ranks(state: dict) -> dict:
    """The part of a state every rank needs (rank 0 alone keeps the best weights and the EMA)."""
    return {key: state[key] for key in ("step", "model", "optimizer", "scheduler", "scaler", "loop", "rng")}


def _cpu(tensors: dict) -> dict:
    return {key: value.detach().cpu() if isinstance(value, torch.Tensor) else value for key, value in tensors.items()}
