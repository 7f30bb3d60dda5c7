"""augment-preview: a PNG grid of every augmentation on a real patch, to see what the model sees.

One row per augmentation, applied alone with probability 1 to the same region: its name, the
central z section of raw before and after, of labels before and after, and a (z, x) cut of raw
after through the patch centre (section defects show there as lines). When an augmentation
leaves the geometry alone, the z section shown is the one it changed most, so a missing section
is visible even when it is not the central one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from melecole.data.augment import AUGMENTATIONS, AugmentConfig, build_augmenter, isolate, read_shape
from melecole.data.bundled import load_bundled
from melecole.data.normalize import normalize_raw
from melecole.errors import MelecoleError
from melecole.io import atomic_output

COLUMNS = ("raw before", "raw after", "labels before", "labels after", "raw after (z, x)")


def _region(shape: Sequence[int], centre: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    # A box of ``size`` (cut to the volume) around ``centre``, shifted inside the volume.
    box = []
    for n, c, s in zip(shape, centre, size):
        s = min(s, n)
        start = int(np.clip(c - s // 2, 0, n - s))
        box.append(slice(start, start + s))
    return tuple(box)


def _colour(labels: np.ndarray) -> np.ndarray:
    # (H, W) ids -> (H, W, 3) colours fixed per id (a multiplicative hash), id 0 black.
    ids = labels.astype(np.uint64)
    channels = [((ids * np.uint64(p)) >> np.uint64(7)) % np.uint64(200) + np.uint64(55)
                for p in (2654435761, 2246822519, 3266489917)]
    rgb = np.stack(channels, axis=-1).astype(np.float32) / 255
    rgb[ids == 0] = 0
    return rgb


def preview_rows(raw: np.ndarray, labels: np.ndarray, config: AugmentConfig, patch: Sequence[int],
                 seed: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The images of the grid: for each augmentation, the five panels of :data:`COLUMNS`.

    Args:
        raw: (Z, Y, X) normalised raw volume.
        labels: (Z, Y, X) labels.
        config: augmentation parameters; each augmentation is shown alone at probability 1.
        patch: (Z, Y, X) patch shape.
        seed: seeds the region's position and every augmentation.

    Returns:
        (name, {column: 2-D image}) per augmentation; label panels are (H, W, 3) colours.
    """
    patch = tuple(int(p) for p in patch)
    if any(p > n for p, n in zip(patch, raw.shape)):
        raise MelecoleError(f"patch {patch} does not fit in the volume {raw.shape}")
    rng = np.random.default_rng(seed)
    centre = [int(rng.integers(p // 2, n - (p - p // 2) + 1)) for p, n in zip(patch, raw.shape)]
    before_box = _region(raw.shape, centre, patch)
    raw_before, labels_before = raw[before_box], labels[before_box]
    low, high = np.percentile(raw_before, [1, 99])
    rows = []
    for index, name in enumerate(AUGMENTATIONS):
        single = isolate(config, name)
        box = _region(raw.shape, centre, read_shape(single, patch))
        augment = build_augmenter(single, patch)
        raw_after, labels_after = augment(raw[box], labels[box], np.random.default_rng([seed, index]))
        section = patch[0] // 2
        if np.array_equal(labels_after, labels_before):
            section = int(np.argmax(np.abs(raw_after - raw_before).sum(axis=(1, 2))))
        scale = (lambda image: np.clip((image - low) / max(high - low, 1e-6), 0, 1))
        rows.append((name, {
            "raw before": scale(raw_before[section]),
            "raw after": scale(raw_after[section]),
            "labels before": _colour(labels_before[section]),
            "labels after": _colour(labels_after[section]),
            "raw after (z, x)": scale(raw_after[:, patch[1] // 2, :]),
        }))
    return rows


def write_preview(rows: list[tuple[str, dict[str, np.ndarray]]], out: str | Path, cell: int = 144) -> tuple[int, int]:
    """Draws the rows as a PNG of ``len(rows) * cell`` by ``(1 + len(COLUMNS)) * cell`` pixels.

    Returns:
        (height, width) of the image in pixels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 72
    height, width = len(rows) * cell, (1 + len(COLUMNS)) * cell
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(figure)
    for r, (name, panels) in enumerate(rows):
        bottom = 1 - (r + 1) / len(rows)
        figure.text(0.5 / (1 + len(COLUMNS)), bottom + 0.5 / len(rows), name.replace("_", " "),
                    ha="center", va="center", fontsize=11)
        for c, column in enumerate(COLUMNS):
            axes = figure.add_axes([(c + 1) / (1 + len(COLUMNS)), bottom, 1 / (1 + len(COLUMNS)), 1 / len(rows)])
            axes.imshow(panels[column], cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
            axes.set_axis_off()
            if r == 0:
                axes.text(0.5, 0.97, column, transform=axes.transAxes, ha="center", va="top", fontsize=8,
                          color="black", bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "linewidth": 0})
    with atomic_output(out) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return height, width


def augment_preview(out: str | Path, root: str | Path = "datasets", dataset: str = "flyem-fib-small",
                    config: AugmentConfig | None = None, patch: Sequence[int] = (48, 48, 48),
                    seed: int = 0) -> dict:
    """Writes the preview grid of a bundled dataset's training block to ``out`` (PNG).

    Returns:
        {"out", "augmentations", "height", "width"}.
    """
    raw, labels = load_bundled(root, dataset)["train"]
    rows = preview_rows(normalize_raw(raw, f"{dataset}:raw"), labels, config or AugmentConfig(), patch, seed)
    height, width = write_preview(rows, out)
    return {"out": str(out), "augmentations": [name for name, _ in rows], "height": height, "width": width}
