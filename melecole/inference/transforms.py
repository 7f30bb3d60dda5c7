"""Test-time transforms of a tile: flips and axis orders, their inverses, and how a directly
predicted affinity channel maps back to the original offsets.

Directly predicted affinities change meaning under a transform: the channel of offset ``o`` in the
transformed frame compares ``u`` with ``u + o'`` in the original one, ``o'`` being ``o`` with its
axes permuted and flipped signs. Where ``o'`` is one of the offsets the value is used as it is;
where it is the opposite of one, the same pair of voxels is stored one offset further on; a
transform that maps an offset to neither (a diagonal under a single flip) does not vote for that
channel.
"""

from __future__ import annotations

import itertools

import numpy as np

from melecole.segment.affinities import shifted_pair

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


def forward(volume: np.ndarray, transform: Transform) -> np.ndarray:
    """A (Z, Y, X) volume in the transform's frame."""
    perm, flips = transform
    return np.ascontiguousarray(np.flip(np.transpose(volume, perm), flips) if flips else np.transpose(volume, perm))


def backward(channels: np.ndarray, transform: Transform) -> np.ndarray:
    """(C, Z', Y', X') outputs of the transformed frame back in the original frame."""
    perm, flips = transform
    if flips:
        channels = np.flip(channels, tuple(a + 1 for a in flips))
    inverse = np.argsort(perm)
    return np.ascontiguousarray(np.transpose(channels, (0, *(int(a) + 1 for a in inverse))))


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
