"""prepare: a dataset source -> ``<out>/train*.h5``, ``val*.h5`` and ``test.h5`` (datasets raw, labels).

The dataset gives ``train.h5``, ``val.h5`` (a slab cut off its training block) and ``test.h5``;
every extra training volume gives ``train-<name>.h5`` and, with ``data.validate_extra``, its own
slab ``val-<name>.h5``, so that validation covers every acquisition the model learns from.

Every ``data.test_extra`` dataset gives ``test-<name>.h5``, a second test volume: its own test
block if it has one, else a slab (``data.test_fraction`` along ``data.test_axis``) held out of its
training block *before* the training and validation parts are cut, so the model never trains or
validates on it and no choice (checkpoint, threshold, method) sees it.

Proofread blocks kept in ``<bundled_root>/active/`` (``melecole active add``) become more training
volumes, ``train-active-<name>.h5``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from melecole.config import DataConfig
from melecole.data.bundled import BUNDLED_FILES, load_bundled
from melecole.data.splits import split_block
from melecole.errors import MelecoleError
from melecole.io import check_same_shape, read_volumes, write_volumes

Pair = tuple[np.ndarray, np.ndarray]


def _bundled_splits(config: DataConfig, name: str) -> dict[str, Pair]:
    blocks = load_bundled(config.bundled_root, name)
    train, val = split_block(*blocks["train"], axis=config.val_axis, fraction=config.val_fraction)
    if "test" in blocks:
        return {"train": train, "val": val, "test": blocks["test"]}
    # A dataset without its own test block gives up a second slab for testing.
    train, test = split_block(*train, axis=config.val_axis, fraction=config.val_fraction)
    return {"train": train, "val": val, "test": test}


def _synthetic_splits(config: DataConfig, seed: int) -> dict[str, Pair]:
    from melecole.data.synthetic import make_synthetic_volume

    s = config.synthetic
    return {
        split: make_synthetic_volume(shape=s.shape, anisotropy=s.anisotropy, neurites=s.neurites, noise=s.noise,
                                     blur=s.blur, defects=s.defects, seed=seed * 3 + offset)
        for offset, split in enumerate(("train", "val", "test"))
    }


def _snemi3d_splits(config: DataConfig) -> dict[str, Pair]:
    from melecole.data.snemi3d import SNEMI3D_URL

    folder = Path(config.snemi3d.archive)
    if not folder.exists():
        raise MelecoleError(
            f"{folder}: SNEMI3D is not downloaded; with network access run `dvc import-url {SNEMI3D_URL} "
            f"{folder}` (downloads it and versions it with DVC) or `melecole fetch-snemi3d --out {folder}`"
        )
    from melecole.data.download import sha256sum
    from melecole.data.snemi3d import load_snemi3d

    expected = config.snemi3d.sha256
    if expected and folder.is_file() and sha256sum(folder) != expected.lower():
        raise MelecoleError(f"{folder}: SHA-256 {sha256sum(folder)} differs from data.snemi3d.sha256 {expected}; "
                            "the download is corrupt or not the expected release")
    return load_snemi3d(folder, val_fraction=config.val_fraction, test_fraction=config.val_fraction)


def dataset_splits(config: DataConfig, seed: int) -> dict[str, Pair]:
    """The train / val / test (raw, labels) pairs of the configured source."""
    if config.dataset in BUNDLED_FILES:
        return _bundled_splits(config, config.dataset)
    if config.dataset == "synthetic":
        return _synthetic_splits(config, seed)
    return _snemi3d_splits(config)


def held_out_volumes(config: DataConfig) -> tuple[dict[str, Pair], dict[str, Pair]]:
    """The ``data.test_extra`` test volumes, and what is left of the training blocks they were cut from.

    Returns:
        ({name: (raw, labels) of its test volume}, {name: (raw, labels) of its training block
        without the held-out slab}); the main dataset is skipped (its test block is test.h5).
    """
    tests, remaining = {}, {}
    for name in dict.fromkeys(config.test_extra):
        if name == config.dataset:
            continue
        blocks = load_bundled(config.bundled_root, name)
        if "test" in blocks:
            tests[name] = blocks["test"]
            continue
        remaining[name], tests[name] = split_block(*blocks["train"], axis=config.test_axis,
                                                   fraction=config.test_fraction)
    return tests, remaining


def _sources(config: DataConfig) -> list[Path]:
    root = Path(config.bundled_root)
    names = {config.dataset, *config.extra_train, *config.test_extra} & set(BUNDLED_FILES)
    return [root / name for name in sorted(names)]


def active_volumes(config: DataConfig) -> dict[str, Pair]:
    """The proofread blocks of ``<bundled_root>/active/*.h5`` (``melecole active add``), by output name
    ``train-active-<stem>.h5``; checked again here, since anyone may drop a file into the folder."""
    volumes = {}
    for path in sorted((Path(config.bundled_root) / "active").glob("*.h5")):
        pair = read_volumes(path, {"raw": 3, "labels": 3})
        check_same_shape(path, pair)
        if not np.issubdtype(pair["labels"].dtype, np.integer):
            raise MelecoleError(f"{path}:labels has dtype {pair['labels'].dtype}; integer labels are required")
        volumes[f"train-active-{path.stem.removeprefix('train-active-')}.h5"] = (pair["raw"], pair["labels"])
    return volumes


def prepare(config: DataConfig, seed: int, out: str | Path) -> list[Path]:
    """Writes the prepared volumes and returns their paths.

    The output folder is built beside ``out`` and renamed into place, so an interrupted run
    leaves the previous output (or none) rather than a partial one.
    """
    out = Path(out)
    splits = dataset_splits(config, seed)
    held_out, training_blocks = held_out_volumes(config)
    extras = {name: training_blocks.get(name) or load_bundled(config.bundled_root, name)["train"]
              for name in config.extra_train if name != config.dataset}
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        written = []
        for split, (raw, labels) in splits.items():
            attrs = {"source": config.dataset, "split": split}
            write_volumes(staging / f"{split}.h5", {"raw": raw, "labels": labels.astype(np.uint64)}, attrs)
            written.append(out / f"{split}.h5")
        for name, block in extras.items():
            parts = {"train": block}
            if config.validate_extra:
                parts["train"], parts["val"] = split_block(*block, axis=config.val_axis, fraction=config.val_fraction)
            for split, (raw, labels) in parts.items():
                attrs = {"source": name, "split": split}
                write_volumes(staging / f"{split}-{name}.h5", {"raw": raw, "labels": labels.astype(np.uint64)},
                              attrs)
                written.append(out / f"{split}-{name}.h5")
        for name, (raw, labels) in held_out.items():
            attrs = {"source": name, "split": "test"}
            write_volumes(staging / f"test-{name}.h5", {"raw": raw, "labels": labels.astype(np.uint64)}, attrs)
            written.append(out / f"test-{name}.h5")
        for target, (raw, labels) in active_volumes(config).items():
            write_volumes(staging / target, {"raw": raw, "labels": labels.astype(np.uint64)},
                          {"source": "active", "split": "train"})
            written.append(out / target)
        for source in _sources(config):
            for notice in ("LICENSE.txt", "CITATION.bib", "README.md"):
                if (source / notice).is_file():
                    (staging / "licences" / source.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy(source / notice, staging / "licences" / source.name / notice)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
