"""Training curves as CSV files for ``dvc plots``: the training loss and the validation scores.

Two files in one folder, one row per logged step, a header of fixed columns:

- ``train.csv``: ``step``, ``loss`` (the total training loss averaged since the previous log),
  ``lr``;
- ``validation.csv``: ``step``, ``vi_split``, ``vi_merge``, ``vi_sum``, ``arand``.

Rows are appended as training hands its metrics on (after each periodic checkpoint when
checkpoints are on, so a resumed run never writes a step twice). A fresh run starts the files
anew; a resumed one appends. ``dvc.yaml`` declares both under the train stage, so ``dvc plots
show`` draws them and ``dvc plots diff`` compares experiments.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

TRAIN_COLUMNS = ("step", "loss", "lr")
VALIDATION_COLUMNS = ("step", "vi_split", "vi_merge", "vi_sum", "arand")


def with_vi_sum(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` plus ``<prefix>vi_sum`` for every ``<prefix>vi_split`` with its ``<prefix>vi_merge``."""
    out = dict(metrics)
    for key, value in metrics.items():
        if key.endswith("vi_split"):
            prefix = key[: -len("vi_split")]
            merge = metrics.get(f"{prefix}vi_merge")
            if merge is not None:
                out.setdefault(f"{prefix}vi_sum", float(value) + float(merge))
    return out


class CurveFiles:
    """Appends training and validation rows to ``train.csv`` and ``validation.csv`` in ``folder``."""

    def __init__(self, folder: str | Path, fresh: bool):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.train = self.folder / "train.csv"
        self.validation = self.folder / "validation.csv"
        for path, columns in ((self.train, TRAIN_COLUMNS), (self.validation, VALIDATION_COLUMNS)):
            if fresh or not path.is_file() or path.stat().st_size == 0:
                with open(path, "w", newline="") as handle:
                    csv.writer(handle).writerow(columns)

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        """Writes the row(s) ``metrics`` (as training logs them: ``train_loss``, ``lr``,
        ``val_vi_split``, ...) make for ``step``."""
        if "train_loss" in metrics:
            self._append(self.train, [step, metrics["train_loss"], metrics.get("lr", "")])
        if "val_vi_split" in metrics and "val_vi_merge" in metrics:
            split, merge = float(metrics["val_vi_split"]), float(metrics["val_vi_merge"])
            self._append(self.validation, [step, split, merge, split + merge, metrics.get("val_arand", "")])

    @staticmethod
    def _append(path: Path, row: list) -> None:
        with open(path, "a", newline="") as handle:
            csv.writer(handle).writerow(row)
