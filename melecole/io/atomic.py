"""Write-to-temporary-then-rename, so an interrupted stage never leaves a half-written output."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success renames it to ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yields a not-yet-existing temporary path beside ``path`` for a folder (a zarr store).

    On success the folder replaces ``path``: an existing ``path`` is moved aside, the new
    folder renamed into place, then the old one deleted, so ``path`` is replaced only by a
    complete folder (it is briefly absent between the two renames). On any exception the
    temporary folder is removed and ``path`` is left as it was.

    Raises:
        FileNotFoundError: the body created nothing at the temporary path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    _remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written to replace {path}")
        had_old = path.exists() or path.is_symlink()
        if had_old:
            _remove(old)
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if had_old:
                os.rename(old, path)
            raise
        if had_old:
            _remove(old)
    finally:
        _remove(tmp)
