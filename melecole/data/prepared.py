"""The files of a prepared folder (the output of ``melecole prepare``)."""

from __future__ import annotations

from pathlib import Path

from melecole.errors import MelecoleError


def validation_files(data_dir: str | Path) -> list[Path]:
    """``val.h5`` (the dataset's own slab) first, then the extra volumes' ``val-*.h5`` in name order."""
    data_dir = Path(data_dir)
    val = data_dir / "val.h5"
    if not val.is_file():
        raise MelecoleError(f"{val}: validation volume not found (run `melecole prepare` first)")
    return [val, *sorted(data_dir.glob("val-*.h5"))]


def training_files(data_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """``train*.h5`` and the validation volumes (:func:`validation_files`) of a prepared folder."""
    data_dir = Path(data_dir)
    train = sorted(data_dir.glob("train*.h5"))
    if not train:
        raise MelecoleError(f"{data_dir}: no train*.h5 files (run `melecole prepare` first)")
    return train, validation_files(data_dir)


def held_out_test_files(data_dir: str | Path) -> dict[str, Path]:
    """``{name: test-<name>.h5}``: the extra test volumes of a prepared folder (``data.test_extra``)."""
    return {path.stem[len("test-"):]: path for path in sorted(Path(data_dir).glob("test-*.h5"))}
