"""A random-weight checkpoint for prediction tests (no training needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from melecole.checkpoint import save_checkpoint
from melecole.config import Params, params_as_dict
from melecole.models.registry import build_model


def random_checkpoint(params: Params, path: Path, seed: int = 0, threshold: float | None = 0.5) -> Path:
    """Saves an untrained model of ``params.model`` as a melecole checkpoint at ``path``."""
    torch.manual_seed(seed)
    args = params.model.model_dump(mode="json", exclude={"name", "affinity_head"})
    args["affinity_channels"] = len(params.segment.offsets) if params.model.affinity_head else 0
    model = build_model(params.model.name, **args)
    extra = {"agglomeration_threshold": threshold} if threshold is not None else {}
    save_checkpoint(path, model, params_as_dict(params), extra=extra)
    return path
