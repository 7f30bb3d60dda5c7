"""Voxel embeddings -> affinities at a set of offsets.

Affinity channel ``c`` at offset ``o = (dz, dy, dx)`` compares voxel ``v`` with ``v + o``; 1 means
"same object", 0 "different objects". Pairs whose partner ``v + o`` lies outside the volume get 0
(:func:`valid_mask` says which pairs exist).

The distance-based affinity mirrors the push-apart hinge of the discriminative loss (Lee et al.
2019): the loss pushes embeddings of different objects at least ``2 * delta_d`` apart, so that
distance is where the affinity reaches 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Offsets = Sequence[Sequence[int]]


def _check_offsets(offsets: Offsets) -> list[tuple[int, int, int]]:
    checked = [tuple(int(d) for d in o) for o in offsets]
    if not checked or any(len(o) != 3 for o in checked):
        raise ValueError(f"offsets must be a non-empty list of (dz, dy, dx), got {list(offsets)}")
    return checked


def _pair_slices(
    shape: tuple[int, int, int], offset: tuple[int, int, int], z_range: tuple[int, int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Slices of the voxels ``v`` (restricted to ``z_range``) whose partner ``v + offset`` exists,
    and of those partners; ``None`` if there is no such pair."""
    sources, partners = [], []
    for axis, (size, step) in enumerate(zip(shape, offset)):
        start, stop = max(0, -step), size - max(0, step)
        if axis == 0:
            start, stop = max(start, z_range[0]), min(stop, z_range[1])
        if start >= stop:
            return None
        sources.append(slice(start, stop))
        partners.append(slice(start + step, stop + step))
    return tuple(sources), tuple(partners)


def shifted_pair(shape: Sequence[int], offset: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Slices of the voxels ``v`` of a ``shape`` volume whose partner ``v + offset`` is inside, and
    of those partners (``array[partners]`` lines up with ``array[sources]``); None if no pair is."""
    shape = tuple(int(s) for s in shape)
    return _pair_slices(shape, tuple(int(d) for d in offset), (0, shape[0]))


def valid_mask(shape: Sequence[int], offsets: Offsets) -> np.ndarray:
    """Which voxel pairs exist: ``mask[c, z, y, x]`` is True iff ``(z, y, x) + offsets[c]`` is
    inside a volume of ``shape``.

    Args:
        shape: spatial shape ``(Z, Y, X)``.
        offsets: one ``(dz, dy, dx)`` per channel.

    Returns:
        bool array ``(C, Z, Y, X)``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (Z, Y, X), got {shape}")
    checked = _check_offsets(offsets)
    mask = np.zeros((len(checked),) + shape, dtype=bool)  # (C, Z, Y, X)
    for channel, offset in enumerate(checked):
        pair = _pair_slices(shape, offset, (0, shape[0]))
        if pair is not None:
            mask[(channel,) + pair[0]] = True
    return mask


def _as_tensor(embedding: torch.Tensor | np.ndarray) -> torch.Tensor:
    import torch

    tensor = embedding.detach() if isinstance(embedding, torch.Tensor) else torch.from_numpy(np.asarray(embedding))
    if tensor.ndim != 4:
        raise ValueError(f"embedding must be (E, Z, Y, X), got shape {tuple(tensor.shape)}")
    return tensor


def _pairwise_affinities(
    embedding: torch.Tensor | np.ndarray,
    offsets: Offsets,
    chunk_voxels: int,
    compare: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> np.ndarray:
    """Applies ``compare((E, n...), (E, n...)) -> (n...)`` to every pair, one z-slab at a time."""
    import torch  # here, not at import: segment and evaluate run without torch

    tensor = _as_tensor(embedding)  # (E, Z, Y, X)
    checked = _check_offsets(offsets)
    if chunk_voxels < 1:
        raise ValueError(f"chunk_voxels must be positive, got {chunk_voxels}")
    shape = tuple(tensor.shape[1:])
    out = np.zeros((len(checked),) + shape, dtype=np.float32)  # (C, Z, Y, X)
    # A slab of whole z-planes keeps the per-pair temporaries at about E * chunk_voxels values:
    # slicing the full tensor gives views, only the difference of one slab is materialised.
    slab = max(1, chunk_voxels // max(1, shape[1] * shape[2]))
    with torch.inference_mode():
        for z0 in range(0, shape[0], slab):
            for channel, offset in enumerate(checked):
                pair = _pair_slices(shape, offset, (z0, min(shape[0], z0 + slab)))
                if pair is None:
                    continue
                sources, partners = pair
                e_u = tensor[(slice(None),) + sources].float()  # (E, z, y, x)
                e_v = tensor[(slice(None),) + partners].float()
                out[(channel,) + sources] = compare(e_u, e_v).cpu().numpy()
    return out


def embedding_affinities(
    embedding: torch.Tensor | np.ndarray,
    offsets: Offsets,
    delta_d: float = 1.5,
    norm: str = "l2",
    chunk_voxels: int = 2**22,
) -> np.ndarray:
    """Distance-based affinities ``a = (max(0, 2*delta_d - ||e_u - e_v||) / (2*delta_d))**2``.

    Identical embeddings give 1; embeddings at least ``2 * delta_d`` apart give 0. Computed in
    torch on the embedding's device (a numpy input runs on the CPU), in z-slabs of about
    ``chunk_voxels`` voxels so memory stays bounded for large volumes.

    Args:
        embedding: ``(E, Z, Y, X)`` voxel embeddings, torch tensor or numpy array.
        offsets: one ``(dz, dy, dx)`` per output channel; channel ``c`` compares ``v`` with
            ``v + offsets[c]``.
        delta_d: the loss's push-apart margin; the affinity is 0 beyond ``2 * delta_d``.
        norm: ``"l2"`` (Euclidean) or ``"l1"`` (Manhattan) distance.
        chunk_voxels: voxels per z-slab (at least one z-plane is processed at a time).

    Returns:
        float32 numpy ``(C, Z, Y, X)``; pairs leaving the volume are 0.
    """
    import torch

    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    if delta_d <= 0:
        raise ValueError(f"delta_d must be positive, got {delta_d}")
    order = 1 if norm == "l1" else 2
    margin = 2.0 * delta_d

    def compare(e_u: torch.Tensor, e_v: torch.Tensor) -> torch.Tensor:
        # In place on one difference tensor: several times faster on the CPU than
        # torch.linalg.vector_norm over the strided views (the same values to ~1e-7).
        difference = e_u - e_v
        if order == 2:
            distance = difference.mul_(difference).sum(dim=0).sqrt_()
        else:
            distance = difference.abs_().sum(dim=0)
        return distance.neg_().add_(margin).clamp_(min=0.0).div_(margin).square_()

    return _pairwise_affinities(embedding, offsets, chunk_voxels, compare)


def cosine_affinities(
    embedding: torch.Tensor | np.ndarray,
    offsets: Offsets,
    chunk_voxels: int = 2**22,
) -> np.ndarray:
    """Angle-based affinities ``a = max(0, cos(e_u, e_v))``.

    For embeddings trained to point in one direction per object (e.g. normalised embeddings):
    parallel vectors give 1, orthogonal or opposite vectors 0. A zero vector has no direction
    and gets affinity 0 with everything. Same layout, device and chunking as
    :func:`embedding_affinities`.

    Args:
        embedding: ``(E, Z, Y, X)`` voxel embeddings, torch tensor or numpy array.
        offsets: one ``(dz, dy, dx)`` per output channel.
        chunk_voxels: voxels per z-slab.

    Returns:
        float32 numpy ``(C, Z, Y, X)`` in [0, 1]; pairs leaving the volume are 0.
    """
    import torch


    def compare(e_u: torch.Tensor, e_v: torch.Tensor) -> torch.Tensor:
        cos = torch.nn.functional.cosine_similarity(e_u, e_v, dim=0, eps=1e-8)
        return torch.clamp(cos, min=0.0, max=1.0)

    return _pairwise_affinities(embedding, offsets, chunk_voxels, compare)
