"""tune: a multi-objective Optuna search over params.yaml keys, judged by VI split and VI merge.

Each trial trains (``melecole train`` in a subprocess: torchrun / DDP when ``train.processes``
> 1), then predicts, segments and scores the validation volume of the prepared folder; the test
volume is never used. Trials are stopped early by the median rule on the validation VI that
training reports as it goes. Any number of workers may run one study (same ``--study`` and
``--storage``); ``--trials N`` is the study's total. Outputs, under ``OUT/STUDY/``::

    trial-NNNN/   one folder per trial (params.yaml, train.log, checkpoint.pt, metrics.json, ...)
    pareto.csv    every finished trial, with an on_front column
    pareto.png    VI merge against VI split, the front highlighted

With tracking on, the study is one MLflow run and each trial's training run is nested under it.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from melecole.config import Params, params_as_dict
from melecole.errors import MelecoleError
from melecole.experiments import merge
from melecole.tuning.pareto import TrialRecord, best, format_front, plot, summary_line, write_best, write_csv
from melecole.tuning.pruning import should_prune
from melecole.tuning.space import SearchSpace, read_space, trial_params
from melecole.tuning.trial import TrialFiles, TrialOutcome, run_trial

_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
Say = Callable[[str], None]


def default_storage(out: str | Path) -> str:
    """The SQLite file ``OUT/optuna.db`` as an Optuna storage URL."""
    return f"sqlite:///{(Path(out) / 'optuna.db').resolve()}"


def parse_reference(text: str) -> tuple[str, tuple[float, float]]:
    """``LABEL=metrics.json`` -> (label, (VI split, VI merge)) for the Pareto plot."""
    label, sep, file = text.partition("=")
    if not sep or not label or not file:
        raise MelecoleError(f"--reference {text!r}: expected LABEL=metrics.json")
    path = Path(file)
    if not path.is_file():
        raise MelecoleError(f"{path}: reference metrics file not found")
    try:
        metrics = json.loads(path.read_text())
        return label, (float(metrics["vi_split"]), float(metrics["vi_merge"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise MelecoleError(f"{path}: expected a JSON object with numbers vi_split and vi_merge") from None


def _check_inputs(study: str, trials: int, data_dir: Path) -> None:
    if not _STUDY_NAME.fullmatch(study):
        raise MelecoleError(f"--study {study!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    if trials < 1:
        raise MelecoleError(f"--trials {trials}: a study needs at least one trial")
    if not (data_dir / "val.h5").is_file() or not any(data_dir.glob("train*.h5")):
        raise MelecoleError(f"{data_dir}: needs train*.h5 and val.h5 (run `melecole prepare` first)")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler ending the job) stops the running trial cleanly, as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _describe(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _parent_run(studies, study, name: str, base: dict, space: SearchSpace, url: str, trials: int) -> str | None:
    """The study's MLflow run: the recorded one, or a new one recorded in the study."""
    from melecole.tracking import Tracker, run_exists, tracking_uri

    tracking = base["tracking"]
    if not tracking["enabled"]:
        return None
    store = studies.masked(tracking_uri())
    recorded = studies.parent_run(study, store)
    if recorded and run_exists(recorded):
        return recorded
    definition = space.definition()
    tracker = Tracker.start(tracking["experiment"], {
        "optuna": {"study": name, "storage": studies.masked(url), "trials": trials},
        "space": definition["space"],
        "fixed": definition["fixed"]}, run_name=f"tune-{name}", tags={"optuna_study": name, "melecole_role": "study"})
    winner = studies.set_parent_run(study, store, tracker.run_id)
    if winner != tracker.run_id:  # another worker created the study's run at the same moment
        tracker.delete()
    return winner


def _close_trial_run(files: TrialFiles, params: dict, study: str, number: int, outcome: TrialOutcome,
                     say: Say) -> None:
    """Names the trial's training run, adds the objectives and ends it (KILLED when pruned)."""
    from melecole.tracking import Tracker, find_runs

    try:
        run_id = files.run_file.read_text().strip() if files.run_file.is_file() else None
        if not run_id:
            found = find_runs(params["tracking"]["experiment"], {"optuna_study": study, "optuna_trial": str(number)})
            run_id = found[0] if found else None
        if not run_id:
            return
        tracker = Tracker.resume(run_id)
        tracker.set_tags({"mlflow.runName": f"{study}-trial-{number:04d}", "optuna_state": outcome.status})
        if outcome.status == "complete":
            m = outcome.metrics
            tracker.log_metrics({"objective_vi_split": m["vi_split"], "objective_vi_merge": m["vi_merge"],
                                 "objective_vi_sum": m["vi_split"] + m["vi_merge"], "objective_arand": m["arand"]})
        tracker.finish({"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}[outcome.status])
    except Exception as error:  # noqa: BLE001 - the search goes on without the bookkeeping
        say(f"trial {number}: could not update its MLflow run ({error})")


def _trial_work(name: str, base: dict, space: SearchSpace, folder: Path, data_dir: Path, parent: str | None,
                say: Say) -> Callable:
    """The work of one trial, for :func:`melecole.tuning.study.run_worker`."""

    def work(handle) -> TrialOutcome:
        params = trial_params(base, space, handle.values)
        files = TrialFiles(folder / f"trial-{handle.number:04d}")
        tracked = bool(params.get("tracking", {}).get("enabled"))
        env = {}
        if tracked:
            from melecole.tracking import PARENT_RUN_VARIABLE, TAGS_VARIABLE

            env[TAGS_VARIABLE] = json.dumps({"optuna_study": name, "optuna_trial": str(handle.number)})
            if parent:
                env[PARENT_RUN_VARIABLE] = parent
        say(f"trial {handle.number}: {_describe(handle.values)}")

        def on_validation(record: dict) -> bool:
            handle.record_validation(record)
            rule = space.pruning
            return rule.enabled and should_prune(record["vi_split"] + record["vi_merge"], int(record["step"]),
                                                 handle.completed_curves(), rule.startup_trials, rule.warmup_steps)

        outcome = run_trial(params, files.folder, data_dir, on_validation, env=env)
        if tracked:
            _close_trial_run(files, params, name, handle.number, outcome, say)
        if outcome.status == "complete":
            m = outcome.metrics
            say(f"trial {handle.number}: VI split {m['vi_split']:.4f}, VI merge {m['vi_merge']:.4f}")
        elif outcome.status == "pruned":
            say(f"trial {handle.number}: pruned at step {outcome.pruned_at} (VI sum above the median)")
        else:
            last = (outcome.error or "").strip().splitlines()
            say(f"trial {handle.number}: failed: {last[-1] if last else 'no message'}")
        return outcome

    return work


def _report(records: list[TrialRecord], fixed: dict, folder: Path, name: str,
            references: Sequence[str], best_file: str | Path | None) -> str:
    """Writes pareto.csv and pareto.png (and the best override); returns the table."""
    refs = dict(parse_reference(text) for text in references)
    write_csv(records, folder / "pareto.csv")
    plot(records, folder / "pareto.png", f"study {name}: validation VI", refs)
    lines = [summary_line(records), format_front(records), f"wrote {folder / 'pareto.csv'} and {folder / 'pareto.png'}"]
    if best_file is not None:
        chosen = best(records)
        if chosen is None:
            raise MelecoleError(f"{best_file}: not written, the study has no completed trial")
        write_best(chosen, fixed, best_file, name)
        lines.append(f"wrote trial {chosen.number} (smallest VI sum on the front) to {best_file}; run it with: "
                     f"dvc exp run -n {name}-trial-{chosen.number} $(melecole overrides {best_file})")
    return "\n".join(lines)


def tune(params: Params, space_file: str | Path, study: str, trials: int, data_dir: str | Path = "data",
         out: str | Path = "outputs/tune", storage: str | None = None, heartbeat: int = 60,
         best_file: str | Path | None = None, references: Sequence[str] = (), params_source: str = "params.yaml",
         say: Say = print) -> str:
    """Runs (or joins, or resumes) a study until it holds ``trials`` finished trials; returns the Pareto table.

    Args:
        params: the base parameters (params.yaml); the space file's ``fixed`` goes on top.
        space_file: the search-space YAML (see :mod:`melecole.tuning.space`).
        study: the study name (also its folder under ``out``).
        trials: the study's budget of finished trials, shared by all its workers.
        data_dir: prepared folder with train*.h5 and val.h5.
        out: output folder; holds the default SQLite storage ``optuna.db``.
        storage: an Optuna RDB URL (default: ``sqlite:///OUT/optuna.db``).
        heartbeat: seconds between heartbeats; a trial silent for twice that is failed and retried.
        best_file: where to write the best trial as a params.yaml override.
        references: ``LABEL=metrics.json`` points drawn on the Pareto plot.
        params_source: names ``params`` in error messages.
        say: prints progress lines.
    """
    from melecole.tuning import study as studies

    data_dir, out = Path(data_dir), Path(out)
    _check_inputs(study, trials, data_dir)
    for text in references:
        parse_reference(text)  # a typo should not wait for the end of the search
    if heartbeat < 1:
        raise MelecoleError(f"--heartbeat {heartbeat}: must be at least 1 second")
    base = params_as_dict(params)
    space = read_space(space_file, base, params_source)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    handle = studies.open_study(study, url, heartbeat, space.sampler)
    studies.adopt_definition(handle, space.definition(), str(space_file))
    parent = _parent_run(studies, handle, study, merge(base, space.fixed), space, url, trials)
    folder = out / study
    say(f"study {study} in {studies.masked(url)}: searching {', '.join(space.dimensions)} until the study holds "
        f"{trials} finished trial{'s' if trials > 1 else ''}")
    with _sigterm_as_interrupt():
        studies.run_worker(handle, space, trials, _trial_work(study, base, space, folder, data_dir, parent, say),
                           say, wait_seconds=heartbeat)
    records = studies.trial_records(handle)
    text = _report(records, space.fixed, folder, study, references, best_file)
    if parent:
        _finish_parent(parent, records, folder)
    return text


def _finish_parent(run_id: str, records: list[TrialRecord], folder: Path) -> None:
    """The study's run gets the front's best figures and the Pareto files, and is marked finished."""
    from melecole.tracking import Tracker

    tracker = Tracker.resume(run_id)
    chosen = best(records)
    figures = {"trials_finished": len(records), "pareto_size": sum(r.on_front for r in records)}
    if chosen is not None:
        figures.update(best_trial=chosen.number, best_vi_split=chosen.vi_split, best_vi_merge=chosen.vi_merge,
                       best_vi_sum=chosen.vi_sum)
    tracker.log_metrics(figures)
    for file in ("pareto.csv", "pareto.png"):
        tracker.log_artifact(folder / file)
    tracker.finish()


def tune_report(study: str, out: str | Path = "outputs/tune", storage: str | None = None,
                references: Sequence[str] = (), best_file: str | Path | None = None) -> str:
    """The Pareto table, CSV and PNG of an existing study, without running trials."""
    from melecole.tuning import study as studies

    out = Path(out)
    if storage is None and not (out / "optuna.db").is_file():
        raise MelecoleError(f"{out / 'optuna.db'}: no study database (run `melecole tune` first, or give --storage)")
    handle = studies.open_study(study, storage or default_storage(out), create=False)
    return _report(studies.trial_records(handle), studies.fixed_overrides(handle), out / study, study, references,
                   best_file)
