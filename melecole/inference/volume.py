"""A whole volume through a trained model: embeddings, boundary probabilities, affinities.

Test-time augmentation runs the model on flipped or axis-permuted copies of the volume, maps
each output back, and averages boundary probabilities and affinities (never embeddings: the
embedding of a transformed input need not live in the same space). Directly predicted
affinities change meaning under a transform: the channel of offset ``o`` in the transformed
frame compares ``u`` with ``u + o'`` in the original one, ``o'`` being ``o`` with its axes
permuted and flipped signs. Where ``o'`` is one of the offsets the value is used as it is; where
it is the opposite of one, the same pair of voxels is stored one offset further on; a transform
that maps an offset to neither (a diagonal under a single flip) does not vote for that channel.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from melecole.inference.sliding_window import sliding_window_predict
from melecole.segment.affinities import cosine_affinities, embedding_affinities, shifted_pair

Transform = tuple[tuple[int, int, int], tuple[int, ...]]  # (axis order, flipped axes)


def augmentations(kind: str) -> list[Transform]:
    """The transforms of a test-time augmentation, identity first."""
    if kind == "none":
        return [((0, 1, 2), ())]
    if kind == "flips":
        return [((0, 1, 2), axes) for r in range(4) for axes in itertools.combinations(range(3), r)]
    if kind == "permutations":
        return [(perm, ()) for perm in itertools.permutations(range(3))]
    raise ValueError(f"unknown test-time augmentation '{kind}' (none, flips, permutations)")


def _forward(volume: np.ndarray, transform: Transform) -> np.ndarray:
    perm, flips = transform
    return np.ascontiguousarray(np.flip(np.transpose(volume, perm), flips) if flips else np.transpose(volume, perm))


def _backward(channels: np.ndarray, transform: Transform) -> np.ndarray:
    # channels: (C, Z', Y', X') in the transformed frame -> (C, Z, Y, X) in the original frame.
    perm, flips = transform
    if flips:
        channels = np.flip(channels, tuple(a + 1 for a in flips))
    inverse = np.argsort(perm)
    return np.ascontiguousarray(np.transpose(channels, (0, *(int(a) + 1 for a in inverse))))


def model_device(model: torch.nn.Module) -> torch.device:
    """The device the model's parameters live on (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def predict_volume(model: torch.nn.Module, raw: np.ndarray, patch: tuple[int, int, int],
                   overlap: tuple[int, int, int], batch_size: int, offsets: list[tuple[int, int, int]],
                   delta_d: float, norm: str, augment: str = "none",
                   metric: str = "distance") -> dict[str, np.ndarray]:
    """Runs sliding-window inference over a normalised raw volume (Z, Y, X).

    Returns:
        embedding (E, Z, Y, X) of the untransformed volume, boundary (Z, Y, X) probabilities and
        affinities (C, Z, Y, X), all float32; affinities use the margin and norm the model was
        trained with (``metric="cosine"``: max(0, cosine similarity) instead) and, like the
        boundary, are averaged over the test-time augmentations.
        A model with an affinity head adds predicted_affinities (C, Z, Y, X) probabilities.
    """
    if metric not in ("distance", "cosine"):
        raise ValueError(f"unknown affinity metric '{metric}' (distance, cosine)")
    model.eval()
    device = model_device(model)
    transforms = augmentations(augment)
    embedding, boundary, affinities, predicted = None, 0.0, 0.0, None
    for transform in transforms:
        outputs = sliding_window_predict(model, _forward(raw, transform), patch=patch, overlap=overlap,
                                         batch_size=batch_size, device=device, divisor=tuple(model.divisor))
        emb = _backward(outputs["embedding"], transform)
        if embedding is None:
            embedding = emb
        if "affinities" in outputs:
            probabilities = _backward((1.0 / (1.0 + np.exp(-outputs["affinities"]))).astype(np.float32), transform)
            values, votes = remap_affinities(probabilities, offsets, transform)
            predicted = (values, votes) if predicted is None else (predicted[0] + values, predicted[1] + votes)
        logits = _backward(outputs["boundary"], transform)[0]
        boundary = boundary + 1.0 / (1.0 + np.exp(-logits))
        tensor = torch.from_numpy(emb).to(device)
        affinities = affinities + (cosine_affinities(tensor, offsets) if metric == "cosine" else
                                   embedding_affinities(tensor, offsets, delta_d=delta_d, norm=norm))
    count = float(len(transforms))
    result = {"embedding": embedding, "boundary": (boundary / count).astype(np.float32),
              "affinities": (affinities / count).astype(np.float32)}
    if predicted is not None:
        values, votes = predicted
        # Every pair keeps at least the identity pass's vote; pairs leaving the volume have none.
        result["predicted_affinities"] = np.divide(values, votes, out=np.zeros_like(values),
                                                   where=votes > 0).astype(np.float32)
    return result


def transformed_offset(offset: tuple[int, int, int], transform: Transform) -> tuple[int, int, int]:
    """The original-frame offset compared by channel ``offset`` of a model run in ``transform``'s frame."""
    perm, flips = transform
    original = [0, 0, 0]
    for axis in range(3):
        original[perm[axis]] = -offset[axis] if axis in flips else offset[axis]
    return tuple(original)


def remap_affinities(probabilities: np.ndarray, offsets: list[tuple[int, int, int]],
                     transform: Transform) -> tuple[np.ndarray, np.ndarray]:
    """Predicted affinities of a transformed pass, mapped back to the original channels.

    Args:
        probabilities: (C, Z, Y, X) affinities of the transformed pass, already mapped back to
            the original voxel grid; channel ``c`` was predicted for ``offsets[c]`` in the
            transformed frame.
        offsets: the C offsets.
        transform: (axis order, flipped axes) of the pass.

    Returns:
        (values, votes), both (C, Z, Y, X) float32: the affinity at each original channel and
        voxel, and 1 where this pass gave one, 0 where it could not.
    """
    offsets = [tuple(int(d) for d in o) for o in offsets]
    values = np.zeros(probabilities.shape, dtype=np.float32)
    votes = np.zeros(probabilities.shape, dtype=np.float32)
    shape = probabilities.shape[1:]
    for channel, offset in enumerate(offsets):
        moved = transformed_offset(offset, transform)
        if moved in offsets:
            target = offsets.index(moved)
            values[target] += probabilities[channel]
            votes[target] += 1.0
            continue
        opposite = tuple(-d for d in moved)
        if opposite not in offsets:
            continue
        # Channel holds aff(x, x - O) at x; channel O wants aff(u, u + O) = that value at x = u + O.
        target = offsets.index(opposite)
        pair = shifted_pair(shape, opposite)
        if pair is not None:
            values[(target, *pair[0])] += probabilities[(channel, *pair[1])]
            votes[(target, *pair[0])] += 1.0
    return values, votes
