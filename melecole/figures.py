"""Pictures of a result, for MLflow: one z-slice of raw, ground truth, boundary, embedding and
segmentation side by side, and a map of split and merge errors.

Pure functions from arrays to an RGB image (uint8 ``(H, W, 3)``), so the same picture can be
logged with :meth:`melecole.tracking.Tracker.log_image` at every validation step (MLflow shows
them with a step slider) or saved by hand. Labels get random but reproducible colours (0 is
black); the embedding's first three principal components of the slice become red, green and
blue.

``evaluate`` draws the test volume the same way, its errors judged on the whole volume
(:func:`split_and_merged` of the contingency table) rather than on the slice, and writes the
picture as PNG (:func:`png_bytes`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["error_map", "evaluation_image", "grey", "label_colours", "middle_slice", "panel_image", "pca_colours",
           "png_bytes", "result_image", "split_and_merged"]

# A split or a merge error is a labelled voxel whose object or segment shares at least this
# fraction of its voxels with others: small slivers along boundaries do not count.
ERROR_FRACTION = 0.1
SPLIT_COLOUR, MERGE_COLOUR, BOTH_COLOUR = (230, 40, 40), (40, 80, 230), (220, 40, 220)


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


def split_and_merged(seg_labels: np.ndarray, gt_labels: np.ndarray, counts: np.ndarray,
                     fraction: float = ERROR_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """The ground-truth objects a segmentation splits and the segments that merge objects, judged
    on a whole volume's contingency table.

    An object is split when its largest segment holds less than ``1 - fraction`` of its voxels:
    at least ``fraction`` of it lies in other segments, whether in one piece or in many small
    fragments. A segment merges when its largest object holds less than ``1 - fraction`` of its
    labelled voxels (a segment swallowing many small objects merges too). A sliver along a
    boundary, or a few voxels of a small object in a large segment, stays under ``fraction``.

    Args:
        seg_labels: Segment label of each non-zero table entry, ``(P,)``.
        gt_labels: Ground-truth label of each entry, ``(P,)`` (ignored labels already left out).
        counts: Voxels of each entry, ``(P,)``: the table as
            :meth:`melecole.evaluate.pair_counts.PairCounts.pairs` returns it.
        fraction: The share of an object or segment outside its main partner that is an error.

    Returns:
        ``(split, merged)``: the split ground-truth labels and the merging segment labels, each
        sorted, in the dtype of ``gt_labels`` and ``seg_labels``.
    """
    seg_labels, gt_labels = np.asarray(seg_labels).reshape(-1), np.asarray(gt_labels).reshape(-1)
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    if not seg_labels.size == gt_labels.size == counts.size:
        raise ValueError(f"table entries differ in number: segments {seg_labels.shape}, "
                         f"objects {gt_labels.shape}, counts {counts.shape}")
    found = []
    for labels in (gt_labels, seg_labels):
        values, ids = np.unique(labels, return_inverse=True)  # (L,), (P,)
        ids = ids.reshape(-1)
        sizes = np.bincount(ids, weights=counts, minlength=values.size)  # (L,)
        largest = np.zeros(values.size)
        np.maximum.at(largest, ids, counts)
        found.append(values[largest < (1 - fraction) * sizes])
    return found[0], found[1]


def error_map(segmentation: np.ndarray, ground_truth: np.ndarray, split: np.ndarray | None = None,
              merged: np.ndarray | None = None, background: np.ndarray | None = None) -> np.ndarray:
    """Where a slice's segmentation splits or merges ground-truth objects, ``(H, W, 3)`` uint8.

    Red: a voxel of an object that is split. Blue: a voxel of a segment that merges objects.
    Magenta: both. Grey: correct; black: no ground truth. Without ``split`` and ``merged``, the
    slice judges alone: an object is split where its segment holds less than 1 - ERROR_FRACTION
    of it, a segment merges where its object holds less than 1 - ERROR_FRACTION of it. With them
    (the labels :func:`split_and_merged` found over the whole volume), every voxel of a listed
    object or segment is coloured.

    With ``background`` (an ``(H, W, 3)`` uint8 picture of the slice, such as :func:`grey` of the
    raw), the colours are an overlay: correct voxels show it unchanged, errors tint it and
    voxels without ground truth show it dimmed.
    """
    shape = np.shape(segmentation)
    if np.shape(ground_truth) != shape:
        raise ValueError(f"segmentation {shape} and ground truth {np.shape(ground_truth)} differ")
    if (split is None) != (merged is None):
        raise ValueError("split and merged go together: pass both or neither")
    seg = np.asarray(segmentation).reshape(-1)
    gt = np.asarray(ground_truth).reshape(-1)
    labelled = gt != 0
    if split is None:
        is_split, is_merged = _slice_errors(seg, gt, labelled)
    else:
        # In the slice's own dtypes: np.isin of uint64 against int64 compares through float64.
        is_split = np.isin(gt, np.asarray(split).astype(gt.dtype)) & labelled
        is_merged = np.isin(seg, np.asarray(merged).astype(seg.dtype)) & labelled
    colours = np.zeros((seg.size, 3), dtype=np.uint8)
    colours[is_split] = SPLIT_COLOUR
    colours[is_merged] = MERGE_COLOUR
    colours[is_split & is_merged] = BOTH_COLOUR
    error = is_split | is_merged
    if background is None:
        rgb = colours
        rgb[labelled & ~error] = 96
    else:
        if np.shape(background) != (*shape, 3):
            raise ValueError(f"background {np.shape(background)} is not the slice {shape} in RGB")
        rgb = np.asarray(background, dtype=np.uint8).reshape(-1, 3).copy()
        rgb[~labelled] //= 3
        rgb[error] = (0.35 * rgb[error] + 0.65 * colours[error]).astype(np.uint8)
    return rgb.reshape(*shape, 3)


def _slice_errors(seg: np.ndarray, gt: np.ndarray, labelled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split and merge masks ``(N,)`` of one slice's labels ``(N,)``, from the slice's shares."""
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
    return split, merged


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


def evaluation_image(ground_truth: np.ndarray, segmentation: np.ndarray, split: np.ndarray, merged: np.ndarray,
                     raw: np.ndarray | None = None) -> np.ndarray:
    """One slice of a test volume: raw (when given), ground truth, segmentation and the split /
    merge overlay of :func:`error_map` (on the raw when given), side by side.

    Args:
        ground_truth: ``(H, W)`` labels of the slice.
        segmentation: ``(H, W)`` labels of the slice.
        split: Ground-truth labels split over the whole volume (:func:`split_and_merged`).
        merged: Segment labels merging objects over the whole volume.
        raw: ``(H, W)`` intensities of the slice, or None.
    """
    if np.shape(ground_truth) != np.shape(segmentation) or np.ndim(ground_truth) != 2:
        raise ValueError(f"ground truth {np.shape(ground_truth)} and segmentation {np.shape(segmentation)} "
                         "must be slices (H, W) of one shape")
    if raw is not None and np.shape(raw) != np.shape(ground_truth):
        raise ValueError(f"raw {np.shape(raw)} and ground truth {np.shape(ground_truth)} differ")
    background = None if raw is None else grey(raw)
    panels = [] if background is None else [background]
    panels += [label_colours(ground_truth), label_colours(segmentation),
               error_map(segmentation, ground_truth, split, merged, background)]
    return panel_image(panels)


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB image ``(H, W, 3)`` uint8 as the bytes of a PNG file (Pillow, a dependency of matplotlib)."""
    import io

    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"a PNG is drawn from (H, W, 3) uint8, got {image.shape} {image.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
