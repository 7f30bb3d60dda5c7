"""Proofread blocks (HDF5 with datasets ``raw`` and ``labels``) checked and turned into training volumes.

A training volume has the layout of ``data/train*.h5``: ``raw`` as proofread and ``labels`` as
uint64, 0 meaning unlabelled. Names are ``train-active-<name>-<i>.h5``, so ``melecole train
--data`` picks them up in a prepared folder, and ``melecole prepare`` copies those kept under
``datasets/active/`` into ``data/`` (see the README, "Active learning").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from melecole.errors import MelecoleError
from melecole.io import VolumeSpec, open_volume, write_volumes

PREFIX = "train-active-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SUFFIXES = (".h5", ".hdf5", ".hdf")


def block_files(sources: Sequence[str | Path]) -> list[Path]:
    """The HDF5 files named by ``sources``: files as given, folders' ``*.h5`` files in name order.

    Raises:
        MelecoleError: a source that does not exist, or no file at all.
    """
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found = sorted(p for p in source.iterdir() if p.suffix.lower() in _SUFFIXES and not p.name.startswith("."))
            if not found:
                raise MelecoleError(f"{source}: no HDF5 block files (*.h5) in this folder")
            files += found
        elif source.is_file():
            files.append(source)
        else:
            raise MelecoleError(f"{source}: no such block file or folder")
    return list(dict.fromkeys(files))


def check_block(path: Path, raw: np.ndarray, labels: np.ndarray,
                min_shape: Sequence[int] | None = None) -> np.ndarray:
    """Checks one proofread block and returns its labels as uint64.

    Raises:
        MelecoleError: naming the file, the dataset and the shapes, when raw and labels differ in
            shape, labels are not integers or are negative, nothing is labelled, or the block is
            smaller than ``min_shape`` (the training patch: training could not use it).
    """
    if raw.shape != labels.shape:
        raise MelecoleError(f"{path}: raw {raw.shape} and labels {labels.shape} differ in shape")
    if not np.issubdtype(raw.dtype, np.number) or np.issubdtype(raw.dtype, np.complexfloating):
        raise MelecoleError(f"{path}:raw {raw.shape} has dtype {raw.dtype}; a real-valued image is required")
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise MelecoleError(f"{path}:raw {raw.shape} has {int((~np.isfinite(raw)).sum())} NaN or infinite voxels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise MelecoleError(f"{path}:labels {labels.shape} has dtype {labels.dtype}; integer labels are required "
                            "(0 = unlabelled)")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and int(labels.min()) < 0:
        raise MelecoleError(f"{path}:labels {labels.shape} holds negative ids (smallest {int(labels.min())}); "
                            "ids are >= 0, 0 = unlabelled")
    if not labels.any():
        raise MelecoleError(f"{path}:labels {labels.shape} labels no voxel (all 0); proofread the block first")
    if min_shape is not None and any(s < m for s, m in zip(labels.shape, min_shape)):
        raise MelecoleError(f"{path}: block {labels.shape} is smaller than the training patch {tuple(min_shape)}; "
                            "training could not draw a patch from it (select larger blocks)")
    return labels.astype(np.uint64)


def _read(path: Path, dataset: str) -> tuple[np.ndarray, dict]:
    spec = VolumeSpec(path, dataset)
    with open_volume(spec, ndim=3) as volume:
        return volume.read(), dict(volume.attrs)


def read_block(path: str | Path, min_shape: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads and checks a proofread block: ``(raw, labels as uint64)``, see :func:`check_block`."""
    path = Path(path)
    raw, _ = _read(path, "raw")
    try:
        labels, _ = _read(path, "labels")
    except MelecoleError as error:
        raise MelecoleError(f"{error}; write the proofread labels into it or leave the file out") from None
    return raw, check_block(path, raw, labels, min_shape)


def volume_names(name: str, count: int) -> list[str]:
    """``train-active-<name>-<i>.h5`` for i = 1 .. count.

    Raises:
        MelecoleError: a name with characters other than letters, digits, ``.``, ``_``, ``-``.
    """
    if not _NAME.match(name):
        raise MelecoleError(f"active block name '{name}' must be letters, digits, '.', '_' or '-' "
                            "(it becomes part of file names)")
    return [f"{PREFIX}{name}-{i}.h5" for i in range(1, count + 1)]


def default_name(sources: Sequence[str | Path]) -> str:
    """The folder name of the first source (a folder, or the folder holding a file), made file-safe."""
    first = Path(sources[0]).resolve()
    folder = first if first.is_dir() else first.parent
    return re.sub(r"[^A-Za-z0-9._-]", "-", folder.name).strip("-.") or "blocks"


def write_training_volumes(volumes: Sequence[tuple[np.ndarray, np.ndarray]], out: str | Path, name: str,
                           attrs: Sequence[dict] | None = None) -> list[Path]:
    """Writes ``(raw, labels)`` pairs as ``out/train-active-<name>-<i>.h5``, each atomically.

    Nothing is written when any target exists already (proofread data is never replaced).

    Raises:
        MelecoleError: a target that exists, or a bad name.
    """
    out = Path(out)
    targets = [out / n for n in volume_names(name, len(volumes))]
    taken = [str(t) for t in targets if t.exists()]
    if taken:
        raise MelecoleError(f"{', '.join(taken)} exist(s) already; choose another --name (proofread volumes are "
                            "never replaced)")
    for index, ((raw, labels), target) in enumerate(zip(volumes, targets)):
        extra = dict(attrs[index]) if attrs else {}
        write_volumes(target, {"raw": raw, "labels": np.asarray(labels, dtype=np.uint64)},
                      {"source": "active", "split": "train", **extra})
    return targets
