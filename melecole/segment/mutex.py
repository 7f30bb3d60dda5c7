"""Affinities -> segmentation with the Mutex Watershed (Wolf et al. 2019, arXiv 1904.12654).

The only module that imports the Mutex Watershed libraries (python-elf, backed by bioimage-cpp;
mwatershed for the seeded variant).

Conventions, ours and the library's:

- ours: every channel is an affinity, 1 = same object, 0 = different objects; channel ``c``
  compares voxel ``v`` with ``v + offsets[c]``. The first ``attractive`` channels are attractive
  (merge) edges, the others repulsive (mutex) edges.
- elf's ``mutex_watershed`` wants every channel as a cut probability (1 - affinity): it turns the
  first ``ndim`` channels back into merge weights and uses the rest as repulsion strengths, with
  exactly ``ndim`` attractive channels. Passing affinities unchanged over-segments.
- with seeds, the Rust implementation ``mwatershed`` runs instead (elf's seeded variant adds one
  Python-built mutex edge per pair of seeds, quadratic in their number). It takes signed weights:
  ``+affinity`` for attractive edges, ``-(1 - affinity)`` for repulsive ones, processed by
  decreasing magnitude; tests check both libraries agree without seeds.

The Mutex Watershed processes all edges in one descending order of weight (merge weight =
affinity, repulsion weight = 1 - affinity): an attractive edge joins two clusters unless a mutex
separates them, a repulsive edge puts a mutex between two clusters unless they are already one.
"""

from __future__ import annotations

from collections.abc import Sequence

import mwatershed
import numpy as np
from elf.segmentation.mutex_watershed import mutex_watershed as _elf_mutex_watershed

from melecole.segment.affinities import shifted_pair
from melecole.segment.postprocess import relabel_consecutive

# A repulsion weight below every merge weight (merge weights are affinities in [0, 1]): such an
# edge is processed after all attractive edges, when a mutex can no longer change anything.
# This is how sub-sampled repulsive edges are dropped while the random choice stays ours.
_DROPPED = -1.0


def _stride_keep(
    shape: tuple[int, ...],
    strides: Sequence[int],
    randomize: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """Which repulsive edges to keep: ``shape`` is ``(C_rep, Z, Y, X)``."""
    if randomize:
        return rng.random(shape, dtype=np.float32) < 1.0 / float(np.prod(strides))
    keep = np.zeros(shape, dtype=bool)
    keep[(slice(None),) + tuple(slice(None, None, s) for s in strides)] = True
    return keep


def mutex_watershed(
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    attractive: int = 3,
    strides: Sequence[int] = (1, 2, 2),
    randomize_strides: bool = False,
    mask: np.ndarray | None = None,
    seed: int = 0,
    seeds: np.ndarray | None = None,
) -> np.ndarray:
    """Segments a volume from affinities with the Mutex Watershed.

    Args:
        affinities: ``(C, Z, Y, X)`` affinities in [0, 1], 1 = same object; channel ``c``
            compares ``v`` with ``v + offsets[c]``. Not modified.
        offsets: ``C`` offsets ``(dz, dy, dx)``.
        attractive: the first ``attractive`` channels are attractive edges, the rest repulsive.
            The library fixes this number to the dimensionality, so it must be 3.
        strides: keep repulsive edges only at voxels on this ``(z, y, x)`` grid (attractive
            edges are always kept); long-range edges are many and biased towards splitting.
        randomize_strides: instead of a grid, keep each repulsive edge with probability
            ``1 / prod(strides)``, drawn from ``numpy.random.default_rng(seed)``.
        mask: optional bool ``(Z, Y, X)``; voxels where it is False get label 0 and their edges
            are ignored.
        seed: seed of the random stride choice (unused without ``randomize_strides``).
        seeds: optional integer ``(Z, Y, X)`` seed ids, 0 = no seed: voxels of one seed end in
            one segment, and two seeds never share one.

    Returns:
        uint64 ``(Z, Y, X)`` segmentation, consecutive ids from 1; 0 only where ``mask`` is False.

    Raises:
        ValueError: on inconsistent shapes, offsets, strides or affinities outside [0, 1].
    """
    affinities = np.asarray(affinities)
    if affinities.ndim != 4:
        raise ValueError(f"affinities must be (C, Z, Y, X), got shape {affinities.shape}")
    offsets = [[int(d) for d in o] for o in offsets]
    if len(offsets) != affinities.shape[0] or any(len(o) != 3 for o in offsets):
        raise ValueError(
            f"need one (dz, dy, dx) offset per channel: affinities {affinities.shape}, offsets {offsets}"
        )
    ndim = affinities.ndim - 1
    if attractive != ndim:
        raise ValueError(
            f"the Mutex Watershed library takes exactly {ndim} attractive channels, got attractive={attractive}"
        )
    if len(offsets) <= attractive:
        raise ValueError(f"no repulsive offsets: {len(offsets)} offsets, {attractive} attractive")
    strides = tuple(int(s) for s in strides)
    if len(strides) != ndim or min(strides) < 1:
        raise ValueError(f"strides must be {ndim} positive integers, got {strides}")
    shape = affinities.shape[1:]
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(f"mask {mask.shape} and affinities {affinities.shape} differ in (Z, Y, X)")
    if seeds is not None:
        seeds = np.asarray(seeds)
        if seeds.shape != shape or not np.issubdtype(seeds.dtype, np.integer):
            raise ValueError(f"seeds {seeds.shape} ({seeds.dtype}) must be integer ids over the affinities' {shape}")
    if np.isnan(affinities).any():
        raise ValueError(f"affinities {affinities.shape} contain NaN")
    if affinities.size and not (affinities.min() >= 0.0 and affinities.max() <= 1.0):
        raise ValueError(f"affinities must lie in [0, 1], got range [{affinities.min()}, {affinities.max()}]")

    cut = 1.0 - affinities.astype(np.float32)  # (C, Z, Y, X), a fresh array elf may overwrite
    if np.prod(strides) > 1:
        rng = np.random.default_rng(seed)
        keep = _stride_keep(cut[attractive:].shape, strides, randomize_strides, rng)
        cut[attractive:][~keep] = _DROPPED
    if seeds is not None:
        segmentation = _seeded(cut, offsets, attractive, mask, seeds)
    else:
        segmentation = _elf_mutex_watershed(cut, offsets, strides=[1] * ndim, mask=mask)
    # The library zeroes masked voxels after labelling them, which can leave gaps in the ids.
    return relabel_consecutive(segmentation)


def _seeded(cut: np.ndarray, offsets: list[list[int]], attractive: int, mask: np.ndarray | None,
            seeds: np.ndarray) -> np.ndarray:
    """The seeded Mutex Watershed (mwatershed) on cut probabilities; dropped edges stay dropped."""
    signed = np.empty(cut.shape, dtype=np.float64)  # (C, Z, Y, X)
    signed[:attractive] = 1.0 - cut[:attractive]
    repulsive = cut[attractive:]
    # A dropped repulsive edge (stride) gets the smallest magnitude: processed after every merge.
    signed[attractive:] = np.where(repulsive == _DROPPED, -1e-12, -repulsive)
    if mask is not None:
        # Masked voxels: no merge at all, so each stays alone and is zeroed below.
        outside = ~mask
        for channel, offset in enumerate(offsets):
            touching = outside.copy()  # the voxel or its partner is masked out
            pair = shifted_pair(outside.shape, offset)
            if pair is not None:
                touching[pair[0]] |= outside[pair[1]]
            signed[channel][touching] = -1e-12
    # mwatershed keeps seed ids as they are; shift them above any id it may create.
    ids = np.unique(seeds[seeds != 0])
    compact = np.zeros(seeds.shape, dtype=np.uint64)
    compact[seeds != 0] = np.searchsorted(ids, seeds[seeds != 0]) + 1
    segmentation = np.asarray(mwatershed.agglom(signed, offsets, seeds=compact)).astype(np.uint64)
    if mask is not None:
        segmentation[~mask] = 0
    return segmentation
