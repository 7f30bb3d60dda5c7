"""A whole volume through a trained model: embeddings, boundary probabilities, affinities."""

from __future__ import annotations

import numpy as np
import torch

from melecole.inference.sliding_window import sliding_window_predict
from melecole.segment.affinities import embedding_affinities


def model_device(model: torch.nn.Module) -> torch.device:
    """The device the model's parameters live on (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def predict_volume(model: torch.nn.Module, raw: np.ndarray, patch: tuple[int, int, int],
                   overlap: tuple[int, int, int], batch_size: int, offsets: list[tuple[int, int, int]],
                   delta_d: float, norm: str) -> dict[str, np.ndarray]:
    """Runs sliding-window inference over a normalised raw volume (Z, Y, X).

    Returns:
        embedding (E, Z, Y, X), boundary (Z, Y, X) probabilities and affinities (C, Z, Y, X),
        all float32, affinities computed with the margin and norm the model was trained with.
    """
    model.eval()
    device = model_device(model)
    outputs = sliding_window_predict(model, raw, patch=patch, overlap=overlap, batch_size=batch_size,
                                     device=device, divisor=tuple(model.divisor))
    embedding = outputs["embedding"]
    boundary = 1.0 / (1.0 + np.exp(-outputs["boundary"][0]))
    affinities = embedding_affinities(torch.from_numpy(embedding).to(device), offsets, delta_d=delta_d, norm=norm)
    return {"embedding": embedding, "boundary": boundary.astype(np.float32), "affinities": affinities}
