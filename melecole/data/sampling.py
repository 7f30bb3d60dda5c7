"""Random training patches from one or many labelled volumes; a fixed grid of validation patches."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from melecole.errors import MelecoleError
from melecole.inference.sliding_window import tile_starts

Permute = Literal["all", "xy", "none"]

_PERMUTATIONS = {
    "all": list(itertools.permutations(range(3))),
    "xy": [(0, 1, 2), (0, 2, 1)],
    "none": [(0, 1, 2)],
}


class PatchSampler:
    """Draws (raw, labels) patches of one shape from several volumes.

    Volumes are chosen with probability proportional to their voxel count. ``permute="all"``
    draws one of the six axis orders per patch: neurites that run along z in one block run
    in-plane in another, and a model that has only seen one orientation merges the others.
    Use ``"xy"`` for anisotropic data, where z must stay z. Patches whose labelled (non-zero)
    fraction is below ``min_labelled`` are redrawn.

    With ``augment`` (e.g. :func:`melecole.data.augment.build_augmenter`), the sampler reads a
    ``read``-shaped region instead of a patch (less where a volume is smaller, never less than
    the patch) and hands it, after its own permutation and flips, to ``augment`` with the same
    generator; the rejection test looks at the region's central patch before augmenting, so a
    rejected draw costs no augmentation. Without ``augment`` the draws are exactly those of a
    sampler without it.

    Args:
        volumes: (raw, labels) pairs of equal (Z, Y, X) shape; raw already normalised.
        patch: output patch shape (z, y, x).
        rng: the only source of randomness.
        permute: which axis permutations to draw from.
        flip: flip each axis with probability 1/2.
        min_labelled: minimum fraction of voxels with a label other than 0.
        max_tries: redraws before accepting a poorly labelled patch.
        augment: ``augment(raw_region, labels_region, rng) -> (raw, labels)`` of shape ``patch``.
        read: region shape (z, y, x) to read for ``augment``; defaults to ``patch``.
    """

    def __init__(self, volumes: list[tuple[np.ndarray, np.ndarray]], patch: tuple[int, int, int],
                 rng: np.random.Generator, permute: Permute = "all", flip: bool = True,
                 min_labelled: float = 0.5, max_tries: int = 20,
                 augment: Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
                 | None = None,
                 read: tuple[int, int, int] | None = None):
        if not volumes:
            raise MelecoleError("no training volumes given")
        for raw, labels in volumes:
            if raw.shape != labels.shape:
                raise MelecoleError(f"raw {raw.shape} and labels {labels.shape} differ in shape")
        self.volumes = volumes
        self.patch = tuple(int(p) for p in patch)
        self.read = self.patch if read is None else tuple(int(r) for r in read)
        if augment is None and self.read != self.patch:
            raise ValueError(f"read {self.read} differs from patch {self.patch} but no augment crops it back")
        if any(r < p for r, p in zip(self.read, self.patch)):
            raise ValueError(f"read {self.read} must be at least the patch {self.patch}")
        self.rng = rng
        self.flip = flip
        self.min_labelled = min_labelled
        self.max_tries = max_tries
        self.augment = augment
        # For each volume, the axis orders whose patch fits inside it, with the region read for
        # each: the transposed read shape, cut down to the volume.
        self.choices = [
            [(perm, tuple(min(r, s) for r, s in zip(self._transposed(self.read, perm), raw.shape)))
             for perm in _PERMUTATIONS[permute]
             if all(r <= s for r, s in zip(self._transposed(self.patch, perm), raw.shape))]
            for raw, _ in volumes
        ]
        usable = [i for i, perms in enumerate(self.choices) if perms]
        if not usable:
            shapes = ", ".join(str(raw.shape) for raw, _ in volumes)
            raise MelecoleError(f"patch {self.patch} does not fit in any training volume ({shapes})")
        sizes = np.array([volumes[i][0].size for i in usable], dtype=np.float64)
        self.usable = usable
        self.weights = sizes / sizes.sum()

    @staticmethod
    def _transposed(shape: tuple[int, int, int], perm: tuple[int, int, int]) -> tuple[int, int, int]:
        # Transposing a crop of the returned shape by ``perm`` yields ``shape``.
        result = [0, 0, 0]
        for out_axis, in_axis in enumerate(perm):
            result[in_axis] = shape[out_axis]
        return tuple(result)

    def _draw(self) -> tuple[int, np.ndarray, np.ndarray]:
        index = self.usable[self.rng.choice(len(self.usable), p=self.weights)]
        raw, labels = self.volumes[index]
        perms = self.choices[index]
        perm, read = perms[self.rng.integers(len(perms))]
        corner = [int(self.rng.integers(0, s - r + 1)) for s, r in zip(raw.shape, read)]
        region = tuple(slice(c, c + r) for c, r in zip(corner, read))
        raw_patch = np.transpose(raw[region], perm)
        label_patch = np.transpose(labels[region], perm)
        if self.flip:
            axes = tuple(a for a in range(3) if self.rng.random() < 0.5)
            if axes:
                raw_patch = np.flip(raw_patch, axes)
                label_patch = np.flip(label_patch, axes)
        if self.augment is None:
            return index, np.ascontiguousarray(raw_patch), np.ascontiguousarray(label_patch)
        return index, raw_patch, label_patch

    def _labelled_enough(self, labels: np.ndarray) -> bool:
        # The central patch of a region: what the model sees, up to the augmentation.
        centre = tuple(slice((n - p) // 2, (n - p) // 2 + p) for n, p in zip(labels.shape, self.patch))
        return np.count_nonzero(labels[centre]) >= self.min_labelled * np.prod(self.patch)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One (raw float32 (Z, Y, X), labels (Z, Y, X)) patch."""
        return self.sample_indexed()[1:]

    def sample_indexed(self) -> tuple[int, np.ndarray, np.ndarray]:
        """One patch with the index (into ``volumes``) of the volume it was read from.

        The same draws as :meth:`sample`; the index gives the patch's labels an identity (label
        ids name neurons within one volume only).
        """
        for _ in range(self.max_tries):
            volume, raw_patch, label_patch = self._draw()
            if self._labelled_enough(label_patch):
                break
        if self.augment is not None:
            raw_patch, label_patch = self.augment(raw_patch, label_patch, self.rng)
            raw_patch, label_patch = np.ascontiguousarray(raw_patch), np.ascontiguousarray(label_patch)
            if raw_patch.shape != self.patch or label_patch.shape != self.patch:
                raise ValueError(f"augment returned raw {raw_patch.shape} and labels {label_patch.shape}, "
                                 f"not the patch {self.patch}")
        return volume, raw_patch, label_patch


def grid_patches(shape: Sequence[int], patch: Sequence[int],
                 overlap: Sequence[int] = (0, 0, 0)) -> list[tuple[slice, slice, slice]]:
    """A fixed grid of patches covering a volume, for validation on the same voxels every time.

    Patches step by ``patch - overlap`` along each axis, and the last one along an axis ends
    at the volume's edge, so every voxel is covered (the same tiling as sliding-window
    inference).

    Args:
        shape: (Z, Y, X) volume shape.
        patch: (z, y, x) patch shape, at most the volume's.
        overlap: voxels shared by neighbouring patches, per axis, below the patch.

    Returns:
        The patches' (z, y, x) slices, in C order of their corners.

    Raises:
        MelecoleError: when the patch is larger than the volume or the overlap does not fit.
    """
    shape, patch, overlap = (tuple(int(v) for v in values) for values in (shape, patch, overlap))
    if len(shape) != 3 or len(patch) != 3 or len(overlap) != 3:
        raise MelecoleError(f"volume {shape}, patch {patch} and overlap {overlap} must each be (z, y, x)")
    if any(p > s for p, s in zip(patch, shape)):
        raise MelecoleError(f"patch {patch} does not fit in the volume {shape}")
    if any(not 0 <= o < p for o, p in zip(overlap, patch)):
        raise MelecoleError(f"overlap {overlap} must be at least 0 and below the patch {patch}")
    starts = [tile_starts(s, p, o) for s, p, o in zip(shape, patch, overlap)]
    return [tuple(slice(c, c + p) for c, p in zip(corner, patch)) for corner in itertools.product(*starts)]
