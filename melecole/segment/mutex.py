"""Affinities -> segmentation with the Mutex Watershed (Wolf et al. 2019, arXiv 1904.12654).

Three implementations of one algorithm, chosen by ``implementation``:

- ``fast`` (default): :mod:`melecole.segment.mutex_fast`, compiled with numba; identical
  partitions to elf's, ties included; on 6.5 Mvoxels x 12 offsets (``benchmarks/segment.py``)
  about 10 times faster than elf and 6 times faster than mwatershed, with a seventh of elf's
  working memory.
- ``elf``: python-elf's ``mutex_watershed`` (bioimage-cpp), the reference.
- ``mwatershed``: the Rust implementation ``mwatershed``, seeded or not.

This is the only module that imports the Mutex Watershed libraries. Conventions, ours and theirs:

- ours: every channel is an affinity, 1 = same object, 0 = different objects; channel ``c``
  compares voxel ``v`` with ``v + offsets[c]``. The first ``attractive`` channels are attractive
  (merge) edges, the others repulsive (mutex) edges. uint8 affinities are stored predictions,
  affinity x 255 (:mod:`melecole.inference.encoding`).
- elf's ``mutex_watershed`` wants every channel as a cut probability (1 - affinity): it turns the
  first ``ndim`` channels back into merge weights and uses the rest as repulsion strengths, with
  exactly ``ndim`` attractive channels. Passing affinities unchanged over-segments.
- ``mwatershed.agglom`` takes signed weights: ``+affinity`` for attractive edges, ``-(1 -
  affinity)`` for repulsive ones, processed by decreasing magnitude. Its sort is unstable, so with
  tied weights (uint8 predictions) its partition differs slightly from elf's; an attractive
  affinity of exactly 0 counts as repulsive there, and voxels no positive edge touches end in
  one shared segment. elf's own seeded variant adds one Python-built mutex edge per pair of
  seeds, quadratic in their number, and is not wrapped.

The Mutex Watershed processes all edges in one descending order of weight (merge weight =
affinity, repulsion weight = 1 - affinity): an attractive edge joins two clusters unless a mutex
separates them, a repulsive edge puts a mutex between two clusters unless they are already one.
Equal weights go by increasing edge index ``c * N + v`` (elf's rule; ``fast`` follows it).
"""

from __future__ import annotations

from collections.abc import Sequence

import mwatershed
import numpy as np

from melecole.inference.encoding import PROBABILITY_SCALE, decode
from melecole.segment.affinities import shifted_pair
from melecole.segment.mutex_fast import mutex_watershed_grid
from melecole.segment.postprocess import relabel_consecutive

IMPLEMENTATIONS = ("fast", "elf", "mwatershed")

# A repulsion weight below every merge weight (merge weights are affinities in [0, 1]): such an
# edge is processed after all attractive edges, when a mutex can no longer change anything.
# This is how sub-sampled repulsive edges are dropped while the random choice stays ours.
_DROPPED = -1.0


def _stride_keep(shape: tuple[int, ...], strides: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Which repulsive edges a random stride keeps, ``shape`` ``(C_rep, Z, Y, X)``: each with
    probability ``1 / prod(strides)``. Drawn a channel at a time (the same stream as one draw of
    the whole shape) so only one channel of random floats is held at once."""
    keep = np.empty(shape, dtype=bool)
    for channel in range(shape[0]):
        keep[channel] = rng.random(shape[1:], dtype=np.float32) < 1.0 / float(np.prod(strides))
    return keep


def _grid_keep(shape: tuple[int, ...], strides: Sequence[int]) -> np.ndarray:
    keep = np.zeros(shape, dtype=bool)
    keep[(slice(None),) + tuple(slice(None, None, s) for s in strides)] = True
    return keep


def _as_uint8(affinities: np.ndarray) -> np.ndarray | None:
    """float32 affinities that are exactly decoded uint8 predictions (value / 255), as uint8; else
    None. Checked a channel at a time, stopping at the first that is not."""
    encoded = np.empty(affinities.shape, dtype=np.uint8)
    for channel, values in enumerate(affinities):
        levels = np.rint(values * np.float32(PROBABILITY_SCALE))
        encoded[channel] = levels
        if not np.array_equal(decode(encoded[channel]), values):
            return None
    return encoded


def bias_repulsive(affinities: np.ndarray, attractive: int, bias: float) -> np.ndarray:
    """The affinities with ``bias`` added to the repulsive channels (the first ``attractive``
    channels unchanged), clipped to [0, 1]: ``bias > 0`` weakens every repulsion (weight
    ``1 - a - bias``), so fewer mutexes stop merges; ``bias < 0`` strengthens them.

    Stored predictions (uint8, or float32 that are exactly decoded uint8) are shifted by
    ``round(bias * 255)`` levels, so the result is again exactly decoded uint8 and the Mutex
    Watershed keeps its uint8 path. Returns the input itself for ``bias == 0``, else a new array.
    """
    if bias == 0:
        return affinities
    if not -1.0 <= bias <= 1.0:
        raise ValueError(f"the repulsive bias must lie in [-1, 1], got {bias}")
    biased = np.empty_like(affinities)
    biased[:attractive] = affinities[:attractive]
    shift = int(round(bias * PROBABILITY_SCALE))
    for channel in range(attractive, affinities.shape[0]):
        values = affinities[channel]
        levels = values if values.dtype == np.uint8 else _as_uint8(values[None])
        if levels is None:
            biased[channel] = np.clip(values + np.float32(bias), 0.0, 1.0)
            continue
        top = int(PROBABILITY_SCALE)
        shifted = np.clip(levels.astype(np.int16).reshape(values.shape) + shift, 0, top).astype(np.uint8)
        biased[channel] = shifted if values.dtype == np.uint8 else decode(shifted)
    return biased


def mutex_watershed(
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    attractive: int = 3,
    strides: Sequence[int] = (1, 2, 2),
    randomize_strides: bool = False,
    mask: np.ndarray | None = None,
    seed: int = 0,
    seeds: np.ndarray | None = None,
    implementation: str = "fast",
) -> np.ndarray:
    """Segments a volume from affinities with the Mutex Watershed.

    Args:
        affinities: ``(C, Z, Y, X)`` affinities, 1 = same object: float in [0, 1], or uint8 =
            affinity x 255 (stored predictions; no float copy is made). Channel ``c`` compares
            ``v`` with ``v + offsets[c]``. Not modified.
        offsets: ``C`` offsets ``(dz, dy, dx)``.
        attractive: the first ``attractive`` channels are attractive edges, the rest repulsive.
            The libraries fix this number to the dimensionality, so it must be 3.
        strides: keep repulsive edges only at voxels on this ``(z, y, x)`` grid (attractive
            edges are always kept); long-range edges are many and biased towards splitting.
        randomize_strides: instead of a grid, keep each repulsive edge with probability
            ``1 / prod(strides)``, drawn from ``numpy.random.default_rng(seed)``.
        mask: optional bool ``(Z, Y, X)``; voxels where it is False get label 0 and their edges
            are ignored.
        seed: seed of the random stride choice (unused without ``randomize_strides``).
        seeds: optional integer ``(Z, Y, X)`` seed ids, 0 = no seed: voxels of one seed end in
            one segment, and two seeds never share one.
        implementation: ``fast`` (default), ``elf`` (the reference; no seeds) or ``mwatershed``.
            All three draw the same random strides.

    Returns:
        uint64 ``(Z, Y, X)`` segmentation, consecutive ids from 1 in order of first appearance;
        0 only where ``mask`` is False.

    Raises:
        ValueError: on inconsistent shapes, offsets, strides, affinities outside [0, 1], an
            unknown implementation, or seeds for elf.
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
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got '{implementation}'")
    shape = affinities.shape[1:]
    if mask is not None:
        mask = np.ascontiguousarray(mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(f"mask {mask.shape} and affinities {affinities.shape} differ in (Z, Y, X)")
    if seeds is not None:
        seeds = np.asarray(seeds)
        if seeds.shape != shape or not np.issubdtype(seeds.dtype, np.integer):
            raise ValueError(f"seeds {seeds.shape} ({seeds.dtype}) must be integer ids over the affinities' {shape}")
        if implementation == "elf":
            raise ValueError("implementation 'elf' takes no seeds (use 'fast' or 'mwatershed')")
    if affinities.dtype != np.uint8:
        affinities = np.ascontiguousarray(affinities, dtype=np.float32)
        if np.isnan(affinities).any():
            raise ValueError(f"affinities {affinities.shape} contain NaN")
        if affinities.size and not (affinities.min() >= 0.0 and affinities.max() <= 1.0):
            raise ValueError(f"affinities must lie in [0, 1], got range [{affinities.min()}, {affinities.max()}]")

    rng = np.random.default_rng(seed)
    repulsive_shape = (len(offsets) - attractive,) + shape
    keep = _stride_keep(repulsive_shape, strides, rng) if randomize_strides and np.prod(strides) > 1 else None
    if implementation == "fast":
        if affinities.dtype != np.uint8 and affinities.size:
            # Decoded predictions take the uint8 path: the same weights, keys half the size.
            encoded = _as_uint8(affinities)
            affinities = affinities if encoded is None else encoded
        return mutex_watershed_grid(np.ascontiguousarray(affinities), np.array(offsets), attractive,
                                    strides if keep is None else (1, 1, 1), keep=keep, mask=mask,
                                    seeds=None if seeds is None else _compact(seeds))

    cut = 1.0 - decode(affinities)  # (C, Z, Y, X) float32, a fresh array elf may overwrite
    if np.prod(strides) > 1:
        dropped = ~keep if keep is not None else ~_grid_keep(repulsive_shape, strides)
        cut[attractive:][dropped] = _DROPPED
    if implementation == "mwatershed":
        segmentation = _mwatershed(cut, offsets, attractive, mask, seeds)
    else:
        # elf (and the scikit-learn it pulls in) only for the reference implementation: 2 s of imports.
        from elf.segmentation.mutex_watershed import mutex_watershed as elf_mutex_watershed

        segmentation = elf_mutex_watershed(cut, offsets, strides=[1] * ndim, mask=mask)
    # The libraries zero masked voxels after labelling them, which can leave gaps in the ids.
    return relabel_consecutive(segmentation)


def _compact(seeds: np.ndarray) -> np.ndarray:
    """Seed ids renumbered 1..S in increasing order (0 stays 0), uint32."""
    seeded = seeds != 0
    compact = np.zeros(seeds.shape, dtype=np.uint32)
    compact[seeded] = np.unique(seeds[seeded], return_inverse=True)[1].reshape(-1) + 1
    return compact


def _mwatershed(cut: np.ndarray, offsets: list[list[int]], attractive: int, mask: np.ndarray | None,
                seeds: np.ndarray | None) -> np.ndarray:
    """mwatershed on cut probabilities; dropped edges stay dropped, masked voxels end alone."""
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
    # mwatershed keeps seed ids as they are and names other segments by a voxel index (or the
    # voxel count): shift the seeds above all of those.
    compact = np.zeros(cut.shape[1:], dtype=np.uint64)
    if seeds is not None:
        compact = _compact(seeds).astype(np.uint64)
        compact[compact > 0] += np.uint64(compact.size)
    segmentation = np.asarray(mwatershed.agglom(signed, offsets, seeds=compact)).astype(np.uint64)
    if mask is not None:
        segmentation[~mask] = 0
    return segmentation
