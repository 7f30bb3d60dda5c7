"""The torch device a ``train.device`` setting names, without importing the training stage.

Prediction needs only this from :mod:`melecole.stages.train`, whose imports (segmentation,
calibration, their libraries) cost the predict command some 0.7 s of start-up.
"""

from __future__ import annotations

import torch

from melecole.errors import MelecoleError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise MelecoleError(f"train.device '{name}': {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MelecoleError(f"train.device '{name}': CUDA is not available on this machine")
    return device
