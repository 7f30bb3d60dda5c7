"""A whole volume in memory through a trained model: embeddings, boundary probabilities, affinities.

The same computation as one block of a blockwise prediction (:func:`predict_region` over the
whole volume); training's validation uses it.
"""

from __future__ import annotations

import numpy as np
import torch

from melecole.inference.region import TilePredictor, model_device, predict_region
from melecole.inference.tiling import TileGrid, as_triple
from melecole.inference.transforms import augmentations, remap_affinities, transformed_offset

__all__ = ["augmentations", "check_patch", "count_tiles", "model_device", "predict_volume", "remap_affinities",
           "transformed_offset", "whole_volume_grid"]


def count_tiles(shape, patch, overlap) -> int:
    """Tiles a whole-volume prediction of ``shape`` runs (per test-time transform)."""
    return len(TileGrid.of(shape, patch, overlap).starts())


def check_patch(model: torch.nn.Module, patch, augment: str = "none") -> None:
    """Raises ValueError when the tile (in every test-time frame) does not fit the network's
    downsampling."""
    divisor = tuple(getattr(model, "divisor", (1, 1, 1)))
    for perm, _ in augmentations(augment):
        shape = tuple(as_triple(patch, "patch")[a] for a in perm)
        if any(s % d for s, d in zip(shape, divisor)):
            raise ValueError(f"patch {shape} is not divisible by the model's divisor {divisor}")


def whole_volume_grid(model: torch.nn.Module, raw: np.ndarray, patch, overlap,
                      augment: str) -> tuple[np.ndarray, TileGrid]:
    """The float32 (Z, Y, X) volume and its tile grid, with the model in eval mode and the tile
    checked against the network's downsampling (ValueError otherwise)."""
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 3:
        raise ValueError(f"raw must be (Z, Y, X), got shape {raw.shape}")
    model.eval()
    check_patch(model, patch, augment)
    return raw, TileGrid.of(raw.shape, patch, overlap)


def predict_volume(model: torch.nn.Module, raw: np.ndarray, patch: tuple[int, int, int],
                   overlap: tuple[int, int, int], batch_size: int, offsets: list[tuple[int, int, int]],
                   delta_d: float, norm: str, augment: str = "none", metric: str = "distance",
                   embedding: bool = True, on_tiles=None) -> dict[str, np.ndarray]:
    """Runs sliding-window inference over a normalised raw volume (Z, Y, X) held in memory.

    Returns:
        boundary (Z, Y, X) probabilities and affinities (C, Z, Y, X), float32; affinities use the
        margin and norm the model was trained with (``metric="cosine"``: max(0, cosine
        similarity) instead), are computed per tile and, like the boundary, averaged over the
        test-time augmentations. With ``embedding``, the embedding (E, Z, Y, X) of the
        untransformed volume. A model with an affinity head adds predicted_affinities
        (C, Z, Y, X) probabilities. ``on_tiles(n)`` is called as tiles finish (progress).
    """
    raw, grid = whole_volume_grid(model, raw, patch, overlap, augment)
    predictor = TilePredictor(model, grid.patch, offsets, delta_d, norm, augment, metric, keep_embedding=embedding)
    return predict_region(predictor, lambda region: raw[region], grid, batch_size=batch_size, on_tiles=on_tiles)
