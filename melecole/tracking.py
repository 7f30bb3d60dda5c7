"""MLflow tracking: the only module that imports mlflow.

One pipeline run is one MLflow run. ``train`` opens it and records its id in a small file;
``evaluate`` reopens the same run to add the test metrics. The store defaults to a SQLite file
in the working directory (``mlflow.db``, artifacts under ``mlruns/``); ``MLFLOW_TRACKING_URI``
switches to a server.

A hyper-parameter search nests runs: it opens one run for the study and starts each trial's
training with ``MELECOLE_MLFLOW_PARENT_RUN`` (the study's run id) and ``MELECOLE_MLFLOW_TAGS``
(a JSON object of tags) in its environment; :meth:`Tracker.start` honours both, so the runs a
training subprocess (or its torchrun ranks) creates appear under the study in ``mlflow ui``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from melecole.errors import MelecoleError
from melecole.plots import with_vi_sum

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first runs may race there
    fcntl = None

LOCAL_STORE = "mlflow.db"
PARENT_RUN_VARIABLE = "MELECOLE_MLFLOW_PARENT_RUN"
TAGS_VARIABLE = "MELECOLE_MLFLOW_TAGS"
_ATTEMPTS = 4
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def _mlflow():
    # Imported lazily: mlflow takes seconds to import and most commands never need it.
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow


def tracking_uri(workdir: str | Path = ".") -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store in ``workdir``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(workdir).resolve() / LOCAL_STORE}"


def flatten(params: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b.c": "value"} with values as text, for MLflow params."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def run_tags() -> dict[str, str]:
    """Tags that tie a run to its git commit and DVC experiment."""
    tags = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            tags["git_commit"] = commit.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if dirty.returncode == 0:
            tags["git_dirty"] = str(bool(dirty.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    for variable, tag in (("DVC_EXP_NAME", "dvc_experiment"), ("DVC_EXP_BASELINE_REV", "dvc_baseline_rev"),
                          ("DVC_STAGE", "dvc_stage")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


def run_name(dataset: str, steps: int, now: float | None = None) -> str:
    """A run name that tells runs apart in ``mlflow ui``: the DVC experiment (when DVC runs it) or
    the dataset, the step count and the UTC start time, e.g. ``flyem-fib-small-1500steps-20261201-1310``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{os.environ.get('DVC_EXP_NAME') or dataset}-{steps}steps-{stamp}"


def inherited_tags(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags a search passes to the runs of its trials through the environment.

    ``MELECOLE_MLFLOW_PARENT_RUN`` becomes ``mlflow.parentRunId`` (the run is shown nested under
    that one); ``MELECOLE_MLFLOW_TAGS`` holds a JSON object of further tags.
    """
    environ = os.environ if environ is None else environ
    tags = {}
    if environ.get(PARENT_RUN_VARIABLE):
        tags["mlflow.parentRunId"] = environ[PARENT_RUN_VARIABLE]
    if environ.get(TAGS_VARIABLE):
        try:
            extra = json.loads(environ[TAGS_VARIABLE])
        except json.JSONDecodeError as error:
            raise MelecoleError(f"{TAGS_VARIABLE}: not valid JSON ({error})") from None
        if not isinstance(extra, dict):
            raise MelecoleError(f"{TAGS_VARIABLE}: expected a JSON object of tags")
        tags.update({str(k): str(v) for k, v in extra.items()})
    return tags


def _local_store(uri: str) -> Path | None:
    """The database file of a local SQLite store, else None (a server or another database)."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


@contextlib.contextmanager
def _store_lock(uri: str):
    """Holds an exclusive lock beside a local SQLite store (a no-op for any other store).

    MLflow creates a new store by running its schema migrations; two processes migrating one
    file at once leave it half migrated (``table _alembic_tmp_... already exists``), which no
    retry repairs. Creating the store and the experiment under one lock avoids that race.
    """
    database = _local_store(uri)
    if database is None or fcntl is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _experiment_id(mlflow, experiment: str) -> str:
    uri = tracking_uri()
    for attempt in range(_ATTEMPTS):
        try:
            with _store_lock(uri):
                found = mlflow.set_experiment(experiment)
                if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                    # Opens in MLflow's model-training view (runs, metrics, charts), not the GenAI one.
                    mlflow.MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
                return found.experiment_id
        except Exception as error:  # noqa: BLE001 - any store failure is reported the same way
            # A server may be briefly unavailable; a local store is created under the lock.
            if attempt == _ATTEMPTS - 1:
                raise MelecoleError(f"MLflow store {uri}: cannot start a run ({error})") from None
            time.sleep(1 + attempt)
    raise AssertionError("not reached")


def find_runs(experiment: str, tags: Mapping[str, str]) -> list[str]:
    """Ids of the runs of ``experiment`` carrying all ``tags`` (values without quotes), newest first."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    with _store_lock(tracking_uri()):
        found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return [run.info.run_id for run in client.search_runs([found.experiment_id], filter_string=query,
                                                           order_by=["attributes.start_time DESC"])]


def run_exists(run_id: str) -> bool:
    """Whether the store holds an active (not deleted) run with this id."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri())
    try:
        with _store_lock(tracking_uri()):
            return mlflow.MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 - MlflowException for an unknown id; any failure means "not usable"
        return False


class Tracker:
    """A thin handle on one MLflow run; every method is a no-op when tracking is disabled."""

    def __init__(self, enabled: bool, run_id: str | None = None):
        self.enabled = enabled
        self.run_id = run_id

    @classmethod
    def start(cls, experiment: str, params: Mapping, enabled: bool = True, run_name: str | None = None,
              tags: Mapping[str, str] | None = None) -> Tracker:
        """Creates a run in ``experiment`` with flattened ``params``, the git / DVC tags, the tags a
        search passes through the environment (:func:`inherited_tags`) and ``tags``."""
        if not enabled:
            return cls(False)
        mlflow = _mlflow()
        mlflow.set_tracking_uri(tracking_uri())
        experiment_id = _experiment_id(mlflow, experiment)
        client = mlflow.MlflowClient()
        all_tags = {**run_tags(), **inherited_tags(), **{k: str(v) for k, v in (tags or {}).items()}}
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        items = list(flatten(params).items())
        for start in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in items[start:start + 100]])
        return cls(True, run.info.run_id)

    @classmethod
    def resume(cls, run_id: str | None) -> Tracker:
        """A handle on an existing run (None -> disabled)."""
        if not run_id:
            return cls(False)
        _mlflow().set_tracking_uri(tracking_uri())
        return cls(True, run_id)

    def _client(self):
        return _mlflow().MlflowClient()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        mlflow = _mlflow()
        stamp = mlflow.utils.time.get_current_time_millis()
        entries = [mlflow.entities.Metric(k, float(v), stamp, step or 0) for k, v in with_vi_sum(metrics).items()]
        self._client().log_batch(self.run_id, metrics=entries)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.enabled:
            return
        client = self._client()
        for key, value in tags.items():
            client.set_tag(self.run_id, key, str(value))

    def log_image(self, image, key: str, step: int) -> None:
        """An RGB image ``(H, W, 3)`` uint8 under ``key`` at ``step`` (MLflow shows a step slider)."""
        if self.enabled:
            self._client().log_image(self.run_id, image, key=key, step=int(step))

    def log_datasets(self, files: Mapping[str, Sequence[str | Path]]) -> None:
        """The volumes a run read, per context (``{"training": [...], "validation": [...]}``), as
        MLflow dataset inputs (name, path, a digest of size and modification time); the UI lists
        them on the run's page."""
        if not self.enabled:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for context, paths in files.items():
            for path in paths:
                path = Path(path).resolve()
                stat = path.stat()
                digest = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
                with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local file it is
                    warnings.simplefilter("ignore", UserWarning)
                    source = resolve_dataset_source(str(path))
                dataset = MetaDataset(source, name=path.name, digest=digest)
                inputs.append(DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)]))
        if inputs:
            self._client().log_inputs(self.run_id, datasets=inputs)

    def log_model(self, model, name: str = "model") -> None:
        """The trained network with ``mlflow.pytorch`` (listed under the run's models in the UI).

        Saved in MLflow's pickle format (its ``pt2`` export needs tensor-only outputs): load it
        only from a store you trust; melecole's own checkpoints load with ``weights_only=True``.
        """
        if not self.enabled:
            return
        import mlflow.pytorch
        import torch

        mlflow = _mlflow()
        requirement = f"torch=={torch.__version__.split('+')[0]}"
        # The fluent API is the only way mlflow.pytorch logs into a given run; ending that
        # context marks the run FINISHED, which evaluate's metrics still reach.
        with mlflow.start_run(run_id=self.run_id, log_system_metrics=False):
            mlflow.pytorch.log_model(model, name=name, pip_requirements=[requirement, "melecole"],
                                     serialization_format="pickle")

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if self.enabled:
            self._client().log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self._client().set_terminated(self.run_id, status=status)

    def delete(self) -> None:
        """Deletes the run (it moves to MLflow's trash)."""
        if self.enabled:
            self._client().delete_run(self.run_id)
