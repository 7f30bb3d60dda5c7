"""The augmentation pipeline: a region read larger than the patch in, an augmented patch out.

Order: orientation (flips, transposes, quarter turns: exact views), one resampling for rescale,
elastic warping and misalignment together (one interpolation of raw, never read outside the
region), then the intensity changes and section defects of raw, blanking last so a missing
section stays constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from melecole.data.augment import defects, geometric, intensity
from melecole.data.augment.params import AUGMENTATIONS, AugmentConfig

Triple = tuple[int, int, int]
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
"""``augment(raw_region, labels_region, rng) -> (raw (Z, Y, X) float32, labels (Z, Y, X))``."""


def _margins(config: AugmentConfig, patch: np.ndarray) -> np.ndarray:
    # Spare voxels per axis (both sides together) the resampling may read beyond the patch.
    margin = np.zeros(3, dtype=np.int64)
    if config.rescale.p > 0:
        smallest = np.array([config.rescale.zoom_z[0], config.rescale.zoom_xy[0], config.rescale.zoom_xy[0]])
        margin += np.maximum(0, np.ceil(patch / np.minimum(smallest, 1) - patch - 1e-9)).astype(np.int64)
    if config.elastic.p > 0:
        axes = [1, 2] if config.anisotropic else [0, 1, 2]
        margin[axes] += 2 * math.ceil(config.elastic.magnitude)
    if config.misalignment.p > 0:
        margin[1:] += 2 * config.misalignment.max_shift
    # Even margins keep the patch centre on a voxel of the region: identity = integer crop.
    return margin + margin % 2


def read_shape(config: AugmentConfig, patch: Sequence[int]) -> Triple:
    """How large a region the sampler should read so that augmentation needs no padding.

    The margins of rescale (zooming out), elastic warping and misalignment are added to the
    patch; axes that a transpose or quarter turn may exchange get the largest of their sizes,
    so any allowed orientation of the region still holds the patch and its margins. A sampler
    may read less near a small volume's edge: the warps then shrink to fit.

    Args:
        config: the augmentation parameters.
        patch: (Z, Y, X) shape of the patches the model sees.

    Returns:
        (Z', Y', X') region shape, each at least the patch's.
    """
    patch = np.array([int(p) for p in patch], dtype=np.int64)
    if not config.enabled:
        return tuple(int(p) for p in patch)
    need = patch + _margins(config, patch)
    transposing = config.flip_transpose.p > 0 and config.flip_transpose.transpose
    if transposing and not config.anisotropic:
        need[:] = need.max()
    elif transposing or config.rotate90.p > 0:
        need[1:] = need[1:].max()
    return tuple(int(n) for n in need)


class Augmenter:
    """Applies an :class:`AugmentConfig` to (raw, labels) regions; see :func:`build_augmenter`.

    Args:
        config: the augmentation parameters.
        patch: (Z, Y, X) output shape.
    """

    def __init__(self, config: AugmentConfig, patch: Sequence[int]):
        self.config = config
        self.patch: Triple = tuple(int(p) for p in patch)

    def __call__(self, raw: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augments a region (at least the patch along each axis) into a patch.

        Returns:
            raw (Z, Y, X) float32, labels (Z, Y, X) of the input's dtype, both contiguous.
        """
        raw, labels = self.geometry(raw, labels, rng, self.patch)
        return self.intensity(raw, rng), labels

    def geometry(self, raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Orientation, rescale, elastic warp and misalignment: a region into a ``shape`` patch."""
        cfg = self.config
        if not cfg.enabled:
            return geometric.warp(raw, labels, shape)
        if rng.random() < cfg.flip_transpose.p:
            raw, labels = geometric.flip_transpose(raw, labels, rng, shape, cfg.flip_transpose.flip,
                                                   cfg.flip_transpose.transpose, cfg.anisotropic)
        if rng.random() < cfg.rotate90.p:
            raw, labels = geometric.random_rotate90(raw, labels, rng, shape)
        zoom, field, shifts = (1.0, 1.0, 1.0), None, None
        if rng.random() < cfg.rescale.p:
            zoom = geometric.draw_zoom(rng, cfg.rescale.zoom_z, cfg.rescale.zoom_xy)
        if rng.random() < cfg.elastic.p and cfg.elastic.magnitude > 0:
            axes = (1, 2) if cfg.anisotropic else (0, 1, 2)
            field = geometric.elastic_displacement(shape, rng, cfg.elastic.magnitude, cfg.elastic.spacing, axes)
        if rng.random() < cfg.misalignment.p:
            shifts = defects.misalignment_shifts(int(shape[0]), rng, cfg.misalignment.max_shift,
                                                 cfg.misalignment.slip)
        return geometric.warp(raw, labels, shape, zoom, field, shifts)

    def intensity(self, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Grayscale, motion blur, cut-blur, cut-noise, missing parts, missing sections of a raw patch."""
        cfg = self.config
        if not cfg.enabled:
            return raw
        if rng.random() < cfg.grayscale.p:
            g = cfg.grayscale
            raw = intensity.grayscale(raw, rng, g.contrast, g.brightness, g.gamma, rng.random() < g.per_section)
        if rng.random() < cfg.motion_blur.p:
            raw = defects.motion_blur(raw, rng, cfg.motion_blur.sections, cfg.motion_blur.length)
        if rng.random() < cfg.cut_blur.p:
            axes = (1, 2) if cfg.anisotropic else (0, 1, 2)
            raw = intensity.cut_blur(raw, rng, cfg.cut_blur.size, cfg.cut_blur.factor, axes)
        if rng.random() < cfg.cut_noise.p:
            raw = intensity.cut_noise(raw, rng, cfg.cut_noise.size, cfg.cut_noise.scale)
        if rng.random() < cfg.missing_parts.p:
            m = cfg.missing_parts
            raw = defects.missing_parts(raw, rng, m.sections, m.radius, m.value)
        if rng.random() < cfg.missing_section.p:
            m = cfg.missing_section
            raw = defects.missing_section(raw, rng, m.sections, m.value)
        return raw


def build_augmenter(config: AugmentConfig, patch: Sequence[int]) -> Augmenter:
    """The augmentation callable for patches of shape ``patch``.

    Feed it regions of :func:`read_shape` ``(config, patch)`` (or smaller, down to the patch,
    near a small volume's edge); it returns the augmented patch.

    Args:
        config: the augmentation parameters.
        patch: (Z, Y, X) output shape.

    Returns:
        ``augment(raw, labels, rng) -> (raw (Z, Y, X) float32, labels (Z, Y, X))``; labels keep
        their dtype and only ever hold ids present in the input region.
    """
    return Augmenter(config, patch)


def isolate(config: AugmentConfig, name: str) -> AugmentConfig:
    """``config`` with only augmentation ``name`` switched on, with probability 1.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{name}' (known: {', '.join(AUGMENTATIONS)})")
    update = {other: getattr(config, other).model_copy(update={"p": 1.0 if other == name else 0.0})
              for other in AUGMENTATIONS}
    return config.model_copy(update={"enabled": True, **update})
