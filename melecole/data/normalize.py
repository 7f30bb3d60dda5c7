"""Raw intensity normalisation shared by training and inference."""

from __future__ import annotations

import numpy as np

from melecole.errors import MelecoleError


def normalize_raw(raw: np.ndarray, name: str = "raw") -> np.ndarray:
    """Maps a raw EM volume to zero mean and unit standard deviation, as float32.

    Per-volume standardisation lets volumes of different acquisitions (contrast, brightness,
    bit depth) share one model. Never modifies ``raw``.

    Raises:
        MelecoleError: when the volume is constant, since it then carries no image.
    """
    values = raw.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        raise MelecoleError(f"{name} {raw.shape}: no finite values")
    mean = float(values[finite].mean())
    std = float(values[finite].std())
    if std == 0:
        raise MelecoleError(f"{name} {raw.shape}: constant image (every voxel {mean}), nothing to learn or segment")
    return (values - mean) / std
