"""Generic sliding-window inference of a whole volume with any tile predictor.

Tiles overlap by ``overlap`` voxels; the last tile along each axis is aligned to the volume's
end so every voxel is covered. Overlapping predictions are averaged with a smooth window
(:func:`melecole.inference.blend.blend_window`), so border voxels covered by one tile only keep
that tile's prediction exactly. The model-specific path (affinities per tile, test-time
augmentation) is :mod:`melecole.inference.region`; both share the grid and the blending.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from melecole.inference.blend import RegionBlender, blend_window
from melecole.inference.region import read_padded
from melecole.inference.tiling import TileGrid, as_triple, tile_starts

__all__ = ["blend_window", "sliding_window_predict", "tile_starts"]

Predictor = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


def sliding_window_predict(
    predictor: Predictor,
    raw: np.ndarray,
    patch: Sequence[int],
    overlap: int | Sequence[int],
    batch_size: int = 1,
    device: torch.device | str | None = None,
    divisor: Sequence[int] = (1, 1, 1),
) -> dict[str, np.ndarray]:
    """Predicts a whole volume tile by tile and blends the overlapping predictions.

    Args:
        predictor: maps a ``(B, 1, Z, Y, X)`` float tensor to a dict of ``(B, C_k, Z, Y, X)``
            tensors (typically the model, already in eval mode). Every call must return the
            same keys and channel counts.
        raw: ``(Z, Y, X)`` normalised volume, float32.
        patch: tile shape ``(z, y, x)``; must be divisible by ``divisor``.
        overlap: voxels shared by neighbouring tiles, per axis or one int; below ``patch``.
        batch_size: tiles per predictor call.
        device: where the tiles are sent (pass the model's device); None means the CPU.
        divisor: what each patch dimension must be a multiple of (the network's total
            downsampling).

    Returns:
        One float32 ``(C_k, Z, Y, X)`` array per key the predictor returns.

    Raises:
        ValueError: on bad shapes, a patch not divisible by ``divisor`` or an overlap that does
            not fit, quoting the values.

    A volume smaller than the patch along an axis is reflection-padded at its end and the
    result cropped back. Memory: one accumulator and one weight volume per output.
    """
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 3:
        raise ValueError(f"raw must be (Z, Y, X), got shape {raw.shape}")
    patch, overlap, divisor = as_triple(patch, "patch"), as_triple(overlap, "overlap"), as_triple(divisor, "divisor")
    if min(patch) < 1 or min(divisor) < 1:
        raise ValueError(f"patch {patch} and divisor {divisor} must be positive")
    if any(p % d for p, d in zip(patch, divisor)):
        raise ValueError(f"patch {patch} is not divisible by divisor {divisor}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device("cpu") if device is None else torch.device(device)
    grid = TileGrid(raw.shape, patch, overlap)
    padded = read_padded(lambda region: raw[region], raw.shape, tuple(slice(0, s) for s in grid.padded_shape))
    blender = RegionBlender(tuple(slice(0, s) for s in raw.shape), patch)
    starts = iter(grid.starts())
    keys: set[str] | None = None
    with torch.inference_mode():
        while batch := list(itertools.islice(starts, batch_size)):
            tiles = np.stack([padded[grid.box(start)] for start in batch])[:, None]  # (B, 1, Z, Y, X)
            outputs = predictor(torch.from_numpy(tiles).to(device))
            if not isinstance(outputs, Mapping):
                raise ValueError(f"predictor must return a dict of tensors, got {type(outputs).__name__}")
            if keys is not None and set(outputs) != keys:
                raise ValueError(f"predictor returned keys {sorted(outputs)}, earlier {sorted(keys)}")
            keys = set(outputs)
            for key, tensor in outputs.items():
                if tensor.ndim != 5 or tuple(tensor.shape[2:]) != patch or tensor.shape[0] != len(batch):
                    raise ValueError(
                        f"predictor output '{key}' has shape {tuple(tensor.shape)}, "
                        f"expected ({len(batch)}, C, {', '.join(map(str, patch))})"
                    )
            values = {key: tensor.detach().float().cpu().numpy() for key, tensor in outputs.items()}
            for b, start in enumerate(batch):
                blender.add(start, {key: (value[b], None) for key, value in values.items()})
    return blender.result()
