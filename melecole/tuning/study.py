"""Optuna, and only here: the study in its RDB storage, sampling, the worker loop, the finished trials.

A study minimises (VI split, VI merge) of the validation volume. Its storage is any SQLAlchemy
URL Optuna accepts (a SQLite file on one machine, PostgreSQL for many), so any number of
workers, started at any time, share it. Every worker keeps a heartbeat for its running trial;
a trial whose worker died is failed once its heartbeat is stale and queued again with the same
parameters (Optuna's RetryHeartbeatStaleTrialCallback), and the next worker to look runs it.

Optuna does not take intermediate values (``trial.report``) in multi-objective studies, so the
validation VI seen during training is kept in the trial's user attribute ``validation`` and
judged by :func:`melecole.tuning.pruning.should_prune`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from melecole.errors import MelecoleError
from melecole.tuning import budget
from melecole.tuning.pareto import TrialRecord
from melecole.tuning.space import CategoricalDimension, FloatDimension, SamplerConfig, SearchSpace
from melecole.tuning.trial import TrialOutcome

DIRECTIONS = ["minimize", "minimize"]
OBJECTIVES = ("vi_split", "vi_merge")
_DEFINITION = "melecole_search"
_PARENT_RUN = "mlflow_parent_run"
_MAX_RETRY = 3
_ATTEMPTS = 4

optuna.logging.set_verbosity(optuna.logging.ERROR)  # melecole prints one line per trial itself


@contextlib.contextmanager
def _experimental():
    # Heartbeats and their retry callback have been "experimental" since Optuna 2.8; say so once, here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def masked(url: str) -> str:
    """A storage URL with its password replaced by ``***``."""
    return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)


def _storage(url: str, heartbeat: int | None) -> RDBStorage:
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(_ATTEMPTS):
        try:
            with _experimental():
                    return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                  grace_period=2 * heartbeat if heartbeat else None,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                      max_retry=_MAX_RETRY) if heartbeat else None)
        except Exception as error:  # noqa: BLE001 - drivers raise many types; all mean "cannot open"
            # Workers starting together on a new database may race to create Optuna's tables.
            if attempt == _ATTEMPTS - 1:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise MelecoleError(f"{masked(url)}: cannot open the Optuna storage ({first})") from None
            time.sleep(1 + attempt)
    raise AssertionError("not reached")


def _sampler(config: SamplerConfig) -> optuna.samplers.BaseSampler:
    if config.name == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    if config.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed)


def open_study(name: str, url: str, heartbeat: int | None = None, sampler: SamplerConfig | None = None,
               create: bool = True) -> optuna.Study:
    """Creates the study or joins it (``load_if_exists``); with ``create=False`` it must exist.

    Args:
        name: the study name.
        url: an Optuna RDB storage URL.
        heartbeat: seconds between heartbeats of a running trial (None: no heartbeat, for reading).
        sampler: the sampler settings of the search-space file.
        create: whether a missing study is created.
    """
    storage = _storage(url, heartbeat)
    chosen = _sampler(sampler or SamplerConfig())
    if create:
        study = optuna.create_study(storage=storage, sampler=chosen, study_name=name, directions=DIRECTIONS,
                                    load_if_exists=True)
    else:
        try:
            study = optuna.load_study(study_name=name, storage=storage, sampler=chosen)
        except KeyError:
            raise MelecoleError(f"{masked(url)}: no study named '{name}'") from None
    if [d.name.lower() for d in study.directions] != DIRECTIONS:
        raise MelecoleError(f"{masked(url)}: study '{name}' is not a melecole search (its directions are "
                            f"{[d.name.lower() for d in study.directions]})")
    return study


def adopt_definition(study: optuna.Study, definition: dict, source: str) -> None:
    """Records the search's fixed overrides and space in a new study; a joined study must match them."""
    normal = json.loads(json.dumps(definition))
    stored = study.user_attrs.get(_DEFINITION)
    if stored is None:
        study.set_user_attr(_DEFINITION, normal)
    elif stored != normal:
        raise MelecoleError(f"{source}: study '{study.study_name}' was created with other 'fixed' or 'space' "
                            "sections; restore them or start a new --study")


def fixed_overrides(study: optuna.Study) -> dict:
    """The ``fixed`` section the study was created with ({} for a study made elsewhere)."""
    return (study.user_attrs.get(_DEFINITION) or {}).get("fixed", {})


def parent_run(study: optuna.Study, store: str) -> str | None:
    """The MLflow run (in tracking store ``store``) the study's trials nest under, if one was recorded."""
    return study.user_attrs.get(f"{_PARENT_RUN}:{store}")  # read from the storage on every call


def set_parent_run(study: optuna.Study, store: str, run_id: str) -> str:
    """Records ``run_id`` as the study's run in ``store``; returns the one recorded after this write.

    One attribute per tracking store: workers on machines with stores of their own each keep a
    study run there. Two workers starting at once may both write; reading back tells each which won.
    """
    study.set_user_attr(f"{_PARENT_RUN}:{store}", run_id)
    return parent_run(study, store)


def _replaces(trial: optuna.trial.FrozenTrial) -> int | None:
    """The trial a retry repeats (the last of its retry history), None for an original."""
    with _experimental():
        return (RetryHeartbeatStaleTrialCallback.retry_history(trial) or [None])[-1]


def _slots(study: optuna.Study) -> list[budget.Slot]:
    return [budget.Slot(t.number, t.state.name, _replaces(t), bool(t.user_attrs.get("surplus")))
            for t in study.get_trials(deepcopy=False)]


class TrialHandle:
    """What a trial's work sees of Optuna: its number, sampled values, validation record and peers."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, values: dict):
        self._study = study
        self._trial = trial
        self.number = trial.number
        self.values = values
        self._validation: list[list[float]] = []

    def record_validation(self, record: dict) -> None:
        """Keeps one validation of training ([step, VI split, VI merge]) in the trial."""
        self._validation.append([int(record["step"]), float(record["vi_split"]), float(record["vi_merge"])])
        self._trial.set_user_attr("validation", self._validation)

    def completed_curves(self) -> list[dict[int, float]]:
        """The VI-sum curves of the study's completed trials."""
        return [{int(s): a + b for s, a, b in t.user_attrs.get("validation") or []}
                for t in self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]

    def set_attr(self, key: str, value: object) -> None:
        self._trial.set_user_attr(key, value)


class _Failed(Exception):
    """A trial that failed (its error is in the user attribute ``error``)."""


class _Surplus(Exception):
    """A trial started beyond the budget."""


def _suggest(trial: optuna.Trial, key: str, dimension) -> object:
    if isinstance(dimension, FloatDimension):
        return trial.suggest_float(key, dimension.low, dimension.high, log=dimension.log, step=dimension.step)
    if isinstance(dimension, CategoricalDimension):
        return trial.suggest_categorical(key, dimension.choices)
    return trial.suggest_int(key, dimension.low, dimension.high, step=dimension.step, log=dimension.log)


def run_worker(study: optuna.Study, space: SearchSpace, trials: int, work: Callable[[TrialHandle], TrialOutcome],
               say: Callable[[str], None], wait_seconds: float = 30.0) -> int:
    """Runs trials until the study holds ``trials`` finished ones; returns how many this worker ran.

    Args:
        study: from :func:`open_study` with a heartbeat.
        space: the search space (its ``enqueue`` trials are queued once).
        trials: the study's budget of finished trials, shared by all workers.
        work: runs one trial and returns its outcome.
        say: prints a progress line.
        wait_seconds: how often to look again while other workers' trials may still fill the budget.
    """
    for values in space.enqueue:
        study.enqueue_trial(values, skip_if_exists=True)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    current: dict = {}

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        current["trial"] = trial
        trial.set_user_attr("worker", worker)
        if not budget.within_budget(_slots(study), trial.number, trials):
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number} is beyond the budget of {trials}")
        values = {key: _suggest(trial, key, dimension) for key, dimension in space.dimensions.items()}
        for key in ("validation", "error", "pruned_at"):  # a retry starts with its original's attributes
            if key in trial.user_attrs:
                trial.set_user_attr(key, None)
        outcome = work(TrialHandle(study, trial, values))
        if outcome.status == "pruned":
            trial.set_user_attr("pruned_at", outcome.pruned_at)
            raise optuna.TrialPruned(f"stopped at validation step {outcome.pruned_at}")
        if outcome.status == "failed":
            trial.set_user_attr("error", outcome.error)
            raise _Failed(outcome.error)
        for key, value in outcome.metrics.items():
            if isinstance(value, (int, float)):
                trial.set_user_attr(key, value)
        return outcome.metrics["vi_split"], outcome.metrics["vi_merge"]

    ran, waiting = 0, False
    while True:
        with _experimental():
            optuna.storages.fail_stale_trials(study)
        decision = budget.decide(_slots(study), trials)
        if decision == "stop":
            return ran
        if decision == "wait":
            if not waiting:
                say(f"waiting for trials of other workers (the budget is {trials} finished trials)")
            waiting = True
            time.sleep(wait_seconds)
            continue
        waiting = False
        current.clear()
        try:
            with _experimental():
                study.optimize(objective, n_trials=1, catch=(_Failed, _Surplus))
        except KeyboardInterrupt:
            _requeue(study, current.get("trial"))
            raise
        if not current.get("trial") or not current["trial"].user_attrs.get("surplus"):
            ran += 1


def _requeue(study: optuna.Study, trial: optuna.Trial | None) -> None:
    """Queues an interrupted trial again, as the heartbeat check does for a dead worker's."""
    if trial is None:
        return
    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state == TrialState.FAIL and not frozen.user_attrs.get("surplus"):
        with _experimental():
            RetryHeartbeatStaleTrialCallback(max_retry=_MAX_RETRY)(study, frozen)


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    """Every finished trial that counts (not the superseded or surplus ones), with the front marked."""
    slots = _slots(study)
    superseded = {s.replaces for s in slots if s.replaces is not None}
    front = {t.number for t in study.best_trials}
    records = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if t.user_attrs.get("surplus") or (t.state == TrialState.FAIL and t.number in superseded):
            continue
        values = t.values if t.state == TrialState.COMPLETE else None
        validation = t.user_attrs.get("validation") or []
        records.append(TrialRecord(
            number=t.number, state=t.state.name, params=dict(t.params),
            vi_split=values[0] if values else None, vi_merge=values[1] if values else None,
            arand=t.user_attrs.get("arand"), on_front=t.number in front, pruned_at=t.user_attrs.get("pruned_at"),
            last_validation=(validation[-1][1], validation[-1][2]) if validation else None,
            error=t.user_attrs.get("error")))
    return records
