"""An output under construction: written block by block beside its final name, resumable, and
renamed into place only when every block is done.

``<dir>/.<stem>.partial<suffix>`` holds the data (so the format follows the suffix) and
``<dir>/.<name>.blockwise/`` daisy's records of finished blocks, the worker logs and
``job.json``, the description of the job. A rerun of the same job (same inputs, parameters and
block shape) continues where the interrupted one stopped; any other job starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, to recognise a checkpoint or input that changed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class PartialOutput:
    """The partial data and work folder of one output.

    Args:
        out: the final output path.
        job: JSON-able description of everything the output depends on.
    """

    def __init__(self, out: str | Path, job: dict):
        self.out = Path(out)
        self.job = json.loads(json.dumps(job, sort_keys=True))
        self.data = self.out.with_name(f".{self.out.stem}.partial{self.out.suffix}")
        self.workdir = self.out.with_name(f".{self.out.name}.blockwise")

    def _recorded_job(self) -> dict | None:
        try:
            return json.loads((self.workdir / "job.json").read_text())
        except (OSError, ValueError):
            return None

    def prepare(self, create: Callable[[Path], None]) -> bool:
        """Continues a matching interrupted job, or calls ``create(data_path)`` for a fresh one.

        Returns:
            True when an interrupted run of the same job is continued.
        """
        if self.data.exists() and self._recorded_job() == self.job:
            return True
        _remove(self.data)
        _remove(self.workdir)
        self.workdir.mkdir(parents=True)
        create(self.data)
        # Written last: a job whose creation was interrupted is not mistaken for one to continue.
        (self.workdir / "job.json").write_text(json.dumps(self.job, indent=2, sort_keys=True))
        return False

    def finish(self) -> Path:
        """Puts the complete output in place of any earlier one and removes the work folder."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.out.exists() or self.out.is_symlink():
            old = self.out.with_name(f".{self.out.name}.old")
            _remove(old)
            self.out.rename(old)
            self.data.rename(self.out)
            _remove(old)
        else:
            self.data.rename(self.out)
        _remove(self.workdir)
        return self.out
