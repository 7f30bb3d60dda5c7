"""The real FIB-SEM volumes that ship with melecole under ``datasets/`` (see each folder's README)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from melecole.errors import MelecoleError
from melecole.io import VolumeSpec, check_same_shape, read_volume

# name -> split -> (image file, label file); every file holds one dataset named "stack".
BUNDLED_FILES: dict[str, dict[str, tuple[str, str]]] = {
    "flyem-fib-small": {
        "train": ("train-image.h5", "train-gt.lzf.h5"),
        "test": ("test-image.h5", "test-gt.lzf.h5"),
    },
    "flyem-fib-medulla": {
        "train": ("train-image.h5", "train-gt.h5"),
    },
}

# Published segmentations of flyem-fib-small's test block, scored in its README.
REFERENCE_SEGMENTATIONS = {
    "watershed fragments (test-ws)": "test-ws.lzf.h5",
    "gala agglomeration (test-seg1)": "test-seg1.lzf.h5",
    "gala agglomeration (test-seg4)": "test-seg4.lzf.h5",
}


def load_bundled(root: str | Path, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads every split of a bundled dataset as (raw uint8, labels uint64) pairs.

    Raises:
        MelecoleError: unknown name, missing file, or image and labels of different shapes.
    """
    if name not in BUNDLED_FILES:
        raise MelecoleError(f"unknown bundled dataset '{name}' (known: {', '.join(BUNDLED_FILES)})")
    folder = Path(root) / name
    splits = {}
    for split, (image_file, label_file) in BUNDLED_FILES[name].items():
        raw = read_volume(VolumeSpec(folder / image_file))
        labels = read_volume(VolumeSpec(folder / label_file))
        check_same_shape(folder, {image_file: raw, label_file: labels})
        if np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
            raise MelecoleError(f"{folder / label_file}: negative label ids")
        splits[split] = (raw, labels.astype(np.uint64))
    return splits
