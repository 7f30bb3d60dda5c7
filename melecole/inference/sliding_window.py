"""Whole-volume prediction with a patch-sized model: overlapping tiles, blended.

Tiles overlap by ``overlap`` voxels; the last tile along each axis is aligned to the volume's
end so every voxel is covered. Overlapping predictions are averaged with a smooth window that is
largest at a tile's centre, where the network has the most context, and small but never zero at
its faces, so border voxels covered by one tile only keep that tile's prediction exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

Triple = tuple[int, int, int]
Predictor = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


def _triple(value: int | Sequence[int], name: str) -> Triple:
    values = (int(value),) * 3 if np.isscalar(value) else tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 entries (z, y, x), got {value}")
    return values


def tile_starts(size: int, patch: int, overlap: int) -> list[int]:
    """Start indices of the tiles along one axis of length ``size >= patch``.

    Steps of ``patch - overlap``, plus a last tile ending exactly at ``size``.
    """
    last = size - patch
    starts = list(range(0, last + 1, patch - overlap))
    if starts[-1] != last:
        starts.append(last)
    return starts


def blend_window(patch: Sequence[int]) -> np.ndarray:
    """Separable sine window ``prod_axis sin(pi * (i + 0.5) / P)``: 1 near the centre, small but
    positive at the faces. float32 ``(Z, Y, X)``."""
    axes = [np.sin(np.pi * (np.arange(p) + 0.5) / p) for p in patch]
    return (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).astype(np.float32)


def _batches(starts: Iterator[Triple], batch_size: int) -> Iterator[list[Triple]]:
    while batch := list(itertools.islice(starts, batch_size)):
        yield batch


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
    result cropped back. Memory: one accumulator per output plus one weight volume, never a
    list of all tiles.
    """
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 3:
        raise ValueError(f"raw must be (Z, Y, X), got shape {raw.shape}")
    patch, overlap, divisor = _triple(patch, "patch"), _triple(overlap, "overlap"), _triple(divisor, "divisor")
    if min(patch) < 1 or min(divisor) < 1:
        raise ValueError(f"patch {patch} and divisor {divisor} must be positive")
    if any(p % d for p, d in zip(patch, divisor)):
        raise ValueError(f"patch {patch} is not divisible by divisor {divisor}")
    if any(o < 0 or o >= p for o, p in zip(overlap, patch)):
        raise ValueError(f"overlap {overlap} must be >= 0 and below patch {patch}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device("cpu") if device is None else torch.device(device)

    shape = raw.shape
    padded_shape = tuple(max(s, p) for s, p in zip(shape, patch))
    if padded_shape != shape:
        raw = np.pad(raw, [(0, ps - s) for ps, s in zip(padded_shape, shape)], mode="reflect")

    window = blend_window(patch)  # (Z, Y, X)
    weight = np.zeros(padded_shape, dtype=np.float32)  # (Z, Y, X)
    sums: dict[str, np.ndarray] = {}  # key -> (C_k, Z, Y, X), created at the first batch
    starts = itertools.product(*(tile_starts(s, p, o) for s, p, o in zip(padded_shape, patch, overlap)))

    with torch.inference_mode():
        for batch in _batches(starts, batch_size):
            regions = [tuple(slice(b, b + p) for b, p in zip(start, patch)) for start in batch]
            tiles = np.stack([raw[region] for region in regions])[:, None]  # (B, 1, Z, Y, X)
            outputs = predictor(torch.from_numpy(tiles).to(device))
            if not isinstance(outputs, Mapping):
                raise ValueError(f"predictor must return a dict of tensors, got {type(outputs).__name__}")
            if sums and set(outputs) != set(sums):
                raise ValueError(f"predictor returned keys {sorted(outputs)}, earlier {sorted(sums)}")
            for key, tensor in outputs.items():
                if tensor.ndim != 5 or tuple(tensor.shape[2:]) != patch or tensor.shape[0] != len(batch):
                    raise ValueError(
                        f"predictor output '{key}' has shape {tuple(tensor.shape)}, "
                        f"expected ({len(batch)}, C, {', '.join(map(str, patch))})"
                    )
                values = tensor.detach().float().cpu().numpy()  # (B, C_k, Z, Y, X)
                if key not in sums:
                    sums[key] = np.zeros((values.shape[1],) + padded_shape, dtype=np.float32)
                if sums[key].shape[0] != values.shape[1]:
                    raise ValueError(
                        f"predictor output '{key}' changed from {sums[key].shape[0]} to {values.shape[1]} channels"
                    )
                for region, value in zip(regions, values):
                    sums[key][(slice(None),) + region] += value * window
            for region in regions:
                weight[region] += window

    crop = (slice(None),) + tuple(slice(0, s) for s in shape)
    result = {}
    for key, total in sums.items():
        total /= weight  # every voxel has positive weight: tiles cover the volume, window > 0
        result[key] = np.ascontiguousarray(total[crop]) if padded_shape != shape else total
    return result
