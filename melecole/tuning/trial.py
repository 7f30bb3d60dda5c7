"""One trial of a search: train (a watched subprocess) -> predict -> segment -> evaluate on the validation volume.

Training runs as ``melecole train`` in a subprocess, so that ``train.processes`` > 1 gets
torchrun / DDP exactly as on the command line, and a crash or a stop ends only that trial. The
validation volumes (``val.h5`` and any ``val-*.h5`` of the prepared folder) are then predicted,
segmented and scored pooled in this process; the test volume is never looked at. A trial's files live in one folder::

    params.yaml  train.log  validation.jsonl  checkpoint.pt  run.txt  segmentation.h5  metrics.json
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

import melecole
from melecole.config import Params, params_as_dict, params_from_dict
from melecole.data.prepared import validation_files
from melecole.errors import MelecoleError
from melecole.tuning.runner import run_watched

_TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                       "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


@dataclass(frozen=True)
class TrialOutcome:
    """The result of one trial.

    Attributes:
        status: ``complete``, ``pruned`` or ``failed``.
        metrics: for ``complete``, the validation metrics (``vi_split``, ``vi_merge``, ``arand``).
        pruned_at: for ``pruned``, the validation step at which training was stopped.
        error: for ``failed``, what went wrong (the end of the training log, or the exception).
    """

    status: Literal["complete", "pruned", "failed"]
    metrics: dict = field(default_factory=dict)
    pruned_at: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class TrialFiles:
    """The files of a trial in its folder."""

    folder: Path

    @property
    def params(self) -> Path:
        return self.folder / "params.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"

    @property
    def run_file(self) -> Path:
        return self.folder / "run.txt"

    @property
    def validation_log(self) -> Path:
        return self.folder / "validation.jsonl"

    @property
    def train_log(self) -> Path:
        return self.folder / "train.log"


def train_command(files: TrialFiles, data_dir: str | Path) -> list[str]:
    """``melecole train`` for a trial, with its validation log and MLflow run file."""
    return [sys.executable, "-m", "melecole.cli", "train", "--params", str(files.params), "--data", str(data_dir),
            "--out", str(files.checkpoint), "--run-file", str(files.run_file),
            "--validation-log", str(files.validation_log)]


def training_env(extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the training subprocess: ``base`` (default: ours) with ``extra``.

    A search started inside a torchrun job must not pass its rank variables on, and the
    subprocess must import this very melecole even when it is not installed.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _TORCHRUN_VARIABLES}
    root = str(Path(melecole.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def score_validation(params: Params, checkpoint: Path, val_files: list[Path], folder: Path) -> dict:
    """predict -> segment (the configured method, no baselines) each of ``val_files``, then
    evaluate them pooled into ``metrics.json``; the first volume's result stays as ``segmentation.h5``."""
    from melecole.evaluate import evaluate_pooled
    from melecole.io import VolumeSpec, atomic_output, read_volume
    from melecole.stages.predict import predict
    from melecole.stages.segment import segment

    predictions = folder / "predictions.h5"
    pairs = []
    for index, val_file in enumerate(val_files):
        out = folder / ("segmentation.h5" if index == 0 else f"segmentation-{val_file.stem}.h5")
        predict(params, checkpoint, VolumeSpec(val_file, "raw"), predictions)
        try:
            # Baselines would only add time: a trial is judged by the configured method.
            segment(params.segment.model_copy(update={"baselines": []}), predictions, out, params.seed)
        finally:
            # The embeddings are the largest file and cheap to recompute from the checkpoint.
            predictions.unlink(missing_ok=True)
        labels = VolumeSpec(val_file, "labels")
        pairs.append((read_volume(VolumeSpec(out, "segmentation")), read_volume(labels)))
        if index > 0:
            out.unlink()
    try:
        metrics = evaluate_pooled(pairs)
    except MelecoleError as error:
        raise MelecoleError(f"{', '.join(str(v) for v in val_files)}: {error}") from None
    with atomic_output(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_trial(params_dict: dict, folder: str | Path, data_dir: str | Path, on_validation: Callable[[dict], bool],
              env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
              score: Callable[[Params, Path, list[Path], Path], dict] = score_validation) -> TrialOutcome:
    """Runs one trial in ``folder`` (emptied first) on the prepared volumes of ``data_dir``.

    Args:
        params_dict: the trial's complete parameters.
        folder: the trial's folder.
        data_dir: prepared folder with train*.h5, val.h5 and any val-*.h5.
        on_validation: called with each validation record of training; True stops (prunes) it.
        env: extra environment of the training subprocess (e.g. MLflow nesting).
        cwd: working directory of the training subprocess.
        score: turns (params, checkpoint, validation files, folder) into validation metrics.

    Returns:
        The outcome; failures of training or scoring are outcomes, not exceptions.
    """
    files = TrialFiles(Path(folder))
    shutil.rmtree(files.folder, ignore_errors=True)
    files.folder.mkdir(parents=True)
    try:
        params = params_from_dict(params_dict, f"{files.params}")
    except MelecoleError as error:
        return TrialOutcome("failed", error=str(error))
    files.params.write_text(yaml.safe_dump(params_as_dict(params), sort_keys=False))
    trained = run_watched(train_command(files, data_dir), files.train_log, files.validation_log, on_validation,
                          cwd=cwd, env=training_env(env or {}))
    if trained.status == "pruned":
        return TrialOutcome("pruned", pruned_at=trained.step)
    if trained.status == "failed":
        return TrialOutcome("failed", error=trained.error)
    try:
        metrics = score(params, files.checkpoint, validation_files(data_dir), files.folder)
    except Exception as error:  # noqa: BLE001 - any scoring failure ends this trial only
        message = str(error) if isinstance(error, MelecoleError) else f"{type(error).__name__}: {error}"
        return TrialOutcome("failed", error=f"scoring the validation volume: {message}")
    return TrialOutcome("complete", metrics=metrics)
