"""A segmentation that is one segment, or nearly: the failure of a short or broken training.

An undertrained model predicts no boundaries, the agglomeration then merges everything, and
the result is one segment: VI merge is large, but a user reading three numbers may not see why.
Dense neuron ground truth never looks like that (its largest object holds about 20 % of the
labelled voxels in both bundled volumes), so a segment holding half the volume is called out.
"""

from __future__ import annotations

import numpy as np

# A segment holding at least this share of the (labelled) voxels is called out.
DOMINANT_SHARE = 0.5


def largest_share(sizes: np.ndarray) -> float:
    """The share of the voxels held by the largest segment, from the voxel counts per segment."""
    sizes = np.asarray(sizes, dtype=np.float64)
    total = sizes.sum()
    return float(sizes.max() / total) if total > 0 else 0.0


def segment_sizes(segmentation: np.ndarray) -> np.ndarray:
    """Voxels per segment id present (label 0 counts as a segment too), in id order."""
    import fastremap

    _, counts = fastremap.unique(np.asarray(segmentation), return_counts=True)
    return np.asarray(counts)


def dominance_warning(what: str, share: float, segments: int, threshold: float = DOMINANT_SHARE) -> str | None:
    """A warning when one segment holds ``threshold`` or more of the voxels, else None.

    Args:
        what: names the segmentation in the message (file and dataset).
        share: the largest segment's share of the voxels (:func:`largest_share`).
        segments: number of segments.
    """
    if share < threshold:
        return None
    return (f"{what}: one segment holds {100 * share:.0f} % of the voxels ({segments} segment"
            f"{'s' if segments != 1 else ''} in all) - nearly everything is merged; typical of a model trained "
            "too briefly (no boundaries predicted) or a threshold too high: expect a large VI merge")
