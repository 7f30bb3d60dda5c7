"""Random training patches from one or many labelled volumes, with axis permutations and flips."""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np

from melecole.errors import MelecoleError

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

    Args:
        volumes: (raw, labels) pairs of equal (Z, Y, X) shape; raw already normalised.
        patch: output patch shape (z, y, x).
        rng: the only source of randomness.
        permute: which axis permutations to draw from.
        flip: flip each axis with probability 1/2.
        min_labelled: minimum fraction of voxels with a label other than 0.
        max_tries: redraws before accepting a poorly labelled patch.
    """

    def __init__(self, volumes: list[tuple[np.ndarray, np.ndarray]], patch: tuple[int, int, int],
                 rng: np.random.Generator, permute: Permute = "all", flip: bool = True,
                 min_labelled: float = 0.5, max_tries: int = 20):
        if not volumes:
            raise MelecoleError("no training volumes given")
        for raw, labels in volumes:
            if raw.shape != labels.shape:
                raise MelecoleError(f"raw {raw.shape} and labels {labels.shape} differ in shape")
        self.volumes = volumes
        self.patch = tuple(int(p) for p in patch)
        self.rng = rng
        self.flip = flip
        self.min_labelled = min_labelled
        self.max_tries = max_tries
        # For each volume, the axis orders whose read region fits inside it.
        self.choices = [
            [perm for perm in _PERMUTATIONS[permute] if all(r <= s for r, s in zip(self._read_shape(perm), raw.shape))]
            for raw, _ in volumes
        ]
        usable = [i for i, perms in enumerate(self.choices) if perms]
        if not usable:
            shapes = ", ".join(str(raw.shape) for raw, _ in volumes)
            raise MelecoleError(f"patch {self.patch} does not fit in any training volume ({shapes})")
        sizes = np.array([volumes[i][0].size for i in usable], dtype=np.float64)
        self.usable = usable
        self.weights = sizes / sizes.sum()

    def _read_shape(self, perm: tuple[int, int, int]) -> tuple[int, int, int]:
        # Transposing a crop of this shape by ``perm`` yields ``self.patch``.
        shape = [0, 0, 0]
        for out_axis, in_axis in enumerate(perm):
            shape[in_axis] = self.patch[out_axis]
        return tuple(shape)

    def _draw(self) -> tuple[np.ndarray, np.ndarray]:
        index = self.usable[self.rng.choice(len(self.usable), p=self.weights)]
        raw, labels = self.volumes[index]
        perms = self.choices[index]
        perm = perms[self.rng.integers(len(perms))]
        read = self._read_shape(perm)
        corner = [int(self.rng.integers(0, s - r + 1)) for s, r in zip(raw.shape, read)]
        region = tuple(slice(c, c + r) for c, r in zip(corner, read))
        raw_patch = np.transpose(raw[region], perm)
        label_patch = np.transpose(labels[region], perm)
        if self.flip:
            axes = tuple(a for a in range(3) if self.rng.random() < 0.5)
            if axes:
                raw_patch = np.flip(raw_patch, axes)
                label_patch = np.flip(label_patch, axes)
        return np.ascontiguousarray(raw_patch), np.ascontiguousarray(label_patch)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One (raw float32 (Z, Y, X), labels (Z, Y, X)) patch."""
        for _ in range(self.max_tries):
            raw_patch, label_patch = self._draw()
            if np.count_nonzero(label_patch) >= self.min_labelled * label_patch.size:
                return raw_patch, label_patch
        return raw_patch, label_patch
