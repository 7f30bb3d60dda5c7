"""Pictures of a result, for MLflow: one z-slice of raw, ground truth, boundary, embedding and
segmentation side by side, and a map of split and merge errors.

Pure functions from arrays to an RGB image (uint8 ``(H, W, 3)``), so the same picture can be
logged with :meth:`melecole.tracking.Tracker.log_image` at every validation step (MLflow shows
them with a step slider) or saved by hand. Labels get random but reproducible colours (0 is
black); the embedding's first three principal components of the slice become red, green and
blue.
"""

from __future__ import annotations

import numpy as np

__all__ = ["error_map", "grey", "label_colours", "middle_slice", "panel_image", "pca_colours", "result_image"]

# A split or a merge error is a labelled voxel whose object or segment shares at least this
# fraction of its voxels with others: small slivers along boundaries do not count.
ERROR_FRACTION = 0.1


def middle_slice(shape: tuple[int, ...]) -> int:
    """The z index every picture of a volume of this (Z, Y, X) shape uses."""
    return int(shape[-3]) // 2


def label_colours(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` integer labels -> ``(H, W, 3)`` uint8, one colour per label (hashed), 0 black."""
    labels = np.asarray(labels).astype(np.uint64)
    mixed = labels * np.uint64(0x9E3779B97F4A7C15)  # wraps: a cheap, reproducible hash
    rgb = np.stack([(mixed >> np.uint64(shift)) & np.uint64(0xFF) for shift in (40, 48, 56)], axis=-1)
    rgb = (64 + rgb.astype(np.uint16) * 191 // 255).astype(np.uint8)  # never too dark to see
    rgb[labels == 0] = 0
    return rgb


def grey(values: np.ndarray) -> np.ndarray:
    """``(H, W)`` values -> ``(H, W, 3)`` uint8 grey, stretched between the 1st and 99th percentiles."""
    values = np.asarray(values, dtype=np.float32)
    low, high = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    scaled = np.clip((values - low) / max(float(high - low), 1e-6), 0, 1)
    return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=-1)


def pca_colours(embedding: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` embedding of one slice -> ``(H, W, 3)`` uint8: its first three principal
    components (of the slice's pixels), each stretched to [0, 255]."""
    channels, height, width = embedding.shape
    vectors = embedding.reshape(channels, -1).T.astype(np.float64)  # (H*W, C)
    vectors -= vectors.mean(axis=0)
    _, _, axes = np.linalg.svd(vectors, full_matrices=False)
    components = vectors @ axes[: min(3, channels)].T  # (H*W, <=3)
    if components.shape[1] < 3:
        components = np.pad(components, ((0, 0), (0, 3 - components.shape[1])))
    low, high = components.min(axis=0), components.max(axis=0)
    scaled = (components - low) / np.maximum(high - low, 1e-12)
    return (scaled * 255).astype(np.uint8).reshape(height, width, 3)


def error_map(segmentation: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """Where a slice's segmentation splits or merges ground-truth objects, ``(H, W, 3)`` uint8.

    Red: a voxel of an object that is split (its segment holds less than 1 - ERROR_FRACTION of
    the object). Blue: a voxel of a segment that merges objects (its object holds less than
    1 - ERROR_FRACTION of the segment). Magenta: both. Grey: correct; black: no ground truth.
    """
    seg = np.asarray(segmentation).reshape(-1)
    gt = np.asarray(ground_truth).reshape(-1)
    labelled = gt != 0
    pairs, inverse, counts = np.unique(np.stack([seg, gt]), axis=1, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    _, seg_of = np.unique(pairs[0], return_inverse=True)
    _, gt_of = np.unique(pairs[1], return_inverse=True)
    seg_sizes = np.bincount(seg_of, weights=counts * (pairs[1] != 0))  # labelled voxels per segment
    gt_sizes = np.bincount(gt_of, weights=counts)
    share_of_object = counts / np.maximum(gt_sizes[gt_of], 1)
    share_of_segment = counts / np.maximum(seg_sizes[seg_of], 1)
    split = (share_of_object < 1 - ERROR_FRACTION)[inverse] & labelled
    merged = (share_of_segment < 1 - ERROR_FRACTION)[inverse] & labelled
    rgb = np.zeros((seg.size, 3), dtype=np.uint8)
    rgb[labelled] = 96
    rgb[split] = (230, 40, 40)
    rgb[merged] = (40, 80, 230)
    rgb[split & merged] = (220, 40, 220)
    return rgb.reshape(*np.asarray(segmentation).shape, 3)


def panel_image(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """RGB panels ``(H, W, 3)`` of one size side by side, ``gap`` white pixels apart."""
    if not panels:
        raise ValueError("no panels to draw")
    height = panels[0].shape[0]
    if any(p.shape[0] != height or p.ndim != 3 for p in panels):
        raise ValueError(f"panels must be (H, W, 3) of one height, got {[p.shape for p in panels]}")
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    pieces = [panels[0]]
    for panel in panels[1:]:
        pieces += [spacer, panel]
    return np.concatenate(pieces, axis=1)


def result_image(raw: np.ndarray, ground_truth: np.ndarray, segmentation: np.ndarray,
                 boundary: np.ndarray | None = None, embedding: np.ndarray | None = None,
                 z: int | None = None) -> np.ndarray:
    """The middle z-slice (or ``z``) of a volume's raw, ground truth, boundary, embedding PCA,
    segmentation and split / merge errors, side by side (those given; ``(Z, Y, X)`` arrays, the
    embedding ``(C, Z, Y, X)``)."""
    z = middle_slice(np.shape(raw)) if z is None else int(z)
    panels = [grey(raw[z]), label_colours(ground_truth[z])]
    if boundary is not None:
        panels.append(grey(boundary[z]))
    if embedding is not None:
        panels.append(pca_colours(embedding[:, z]))
    panels += [label_colours(segmentation[z]), error_map(segmentation[z], ground_truth[z])]
    return panel_image(panels)
