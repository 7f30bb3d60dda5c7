"""Two correlated views of one region, with their voxel correspondence, for contrastive learning.

Both views are crops of one region at a random relative offset, each flipped on its own and
augmented in intensity on its own: the same tissue, seen differently. Crops and flips map every
axis separately, so the correspondence is one index array per view and axis: voxel
``view_a[ia[0][i], ia[1][j], ia[2][k]]`` is voxel ``view_b[ib[0][i], ib[1][j], ib[2][k]]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Triple = tuple[int, int, int]
Index = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ViewPair:
    """Two views and where they overlap.

    Attributes:
        raw: the two (Z, Y, X) float32 raw views.
        labels: the two (Z, Y, X) label views.
        index: per view, three int64 arrays (one per axis) listing the shared voxels in matching
            order: ``view[np.ix_(*index[v])]`` has the same shape for both views and holds the
            same tissue voxel at each position.
        offset: (dz, dy, dx) of view b's crop relative to view a's, in region voxels.
    """

    raw: tuple[np.ndarray, np.ndarray]
    labels: tuple[np.ndarray, np.ndarray]
    index: tuple[Index, Index]
    offset: Triple

    def shared(self, view: int, array: np.ndarray) -> np.ndarray:
        """The overlap of ``array`` (a (..., Z, Y, X) array aligned with ``view``), in shared order."""
        return array[(..., *np.ix_(*self.index[view]))]


def views_read_shape(patch: Sequence[int], max_offset: Sequence[int]) -> Triple:
    """The region :func:`two_views` needs: the patch plus the largest offset, per axis."""
    return tuple(int(p) + int(m) for p, m in zip(patch, max_offset))


def two_views(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, patch: Sequence[int],
              max_offset: Sequence[int], flip: bool = True,
              intensity: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None) -> ViewPair:
    """Cuts two overlapping, differently augmented ``patch`` views from one region.

    Args:
        raw: (Z', Y', X') region, at least ``views_read_shape(patch, max_offset)``; typically
            already geometrically augmented (both views share that transform).
        labels: (Z', Y', X') labels of the region.
        rng: the only source of randomness.
        patch: (Z, Y, X) shape of each view.
        max_offset: largest |offset| between the views per axis; below the patch, so the views
            always overlap.
        flip: flip each axis of each view with probability 1/2.
        intensity: ``intensity(raw, rng) -> raw`` applied to each view separately (e.g.
            ``Augmenter.intensity``); None leaves raw as cut.

    Returns:
        A :class:`ViewPair`.

    Raises:
        ValueError: on mismatched shapes, a region too small or an offset not below the patch.
    """
    patch = tuple(int(p) for p in patch)
    max_offset = tuple(int(m) for m in max_offset)
    need = views_read_shape(patch, max_offset)
    if raw.ndim != 3 or raw.shape != labels.shape:
        raise ValueError(f"two_views: raw {raw.shape} and labels {labels.shape} must be one (z, y, x) shape")
    if any(r < n for r, n in zip(raw.shape, need)):
        raise ValueError(f"two_views: region {raw.shape} is smaller than patch {patch} + max offset {max_offset}")
    if any(not 0 <= m < p for m, p in zip(max_offset, patch)):
        raise ValueError(f"two_views: max offset {max_offset} must be at least 0 and below the patch {patch}")
    offset = tuple(int(rng.integers(-m, m + 1)) for m in max_offset)
    # View a's corner leaves room for view b's at corner + offset; both inside the region.
    corner_a = [int(rng.integers(max(0, -d), r - p - max(0, d) + 1)) for d, r, p in zip(offset, raw.shape, patch)]
    corners = (corner_a, [c + d for c, d in zip(corner_a, offset)])
    # Region coordinates of the overlap, per axis.
    shared = [np.arange(max(a, b), min(a, b) + p) for a, b, p in zip(*corners, patch)]
    raws, label_views, indices = [], [], []
    for corner in corners:
        box = tuple(slice(c, c + p) for c, p in zip(corner, patch))
        view_raw, view_labels = raw[box], labels[box]
        index = [coords - c for coords, c in zip(shared, corner)]
        if flip:
            for axis in range(3):
                if rng.random() < 0.5:
                    view_raw, view_labels = np.flip(view_raw, axis), np.flip(view_labels, axis)
                    index[axis] = patch[axis] - 1 - index[axis]
        view_raw = np.array(view_raw, dtype=np.float32, order="C")  # a copy: the region is never aliased
        if intensity is not None:
            view_raw = np.ascontiguousarray(intensity(view_raw, rng), dtype=np.float32)
        raws.append(view_raw)
        label_views.append(np.array(view_labels, order="C"))
        indices.append(tuple(i.astype(np.int64) for i in index))
    return ViewPair(raw=(raws[0], raws[1]), labels=(label_views[0], label_views[1]),
                    index=(indices[0], indices[1]), offset=offset)
