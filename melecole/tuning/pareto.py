"""The outcome of a search: the Pareto front of VI split and VI merge as a table, a CSV and a PNG,
and the best trial written back as a params.yaml override.

Pure functions of :class:`TrialRecord` rows (which trials are on the front is Optuna's answer,
``study.best_trials``); only the writers touch files.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from melecole.experiments import merge
from melecole.io import atomic_output
from melecole.tuning.space import nest


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial of a study.

    Attributes:
        number: the Optuna trial number (its folder is ``trial-NNNN``).
        state: COMPLETE, PRUNED or FAIL.
        params: the searched values, by dotted params.yaml key.
        vi_split: validation VI split (complete trials).
        vi_merge: validation VI merge (complete trials).
        arand: validation adapted Rand error (complete trials).
        on_front: whether the trial is on the Pareto front.
        pruned_at: the step a pruned trial was stopped at.
        last_validation: (VI split, VI merge) of the last validation during training.
        error: why a failed trial failed.
    """

    number: int
    state: str
    params: Mapping[str, object] = field(default_factory=dict)
    vi_split: float | None = None
    vi_merge: float | None = None
    arand: float | None = None
    on_front: bool = False
    pruned_at: int | None = None
    last_validation: tuple[float, float] | None = None
    error: str | None = None

    @property
    def vi_sum(self) -> float | None:
        return None if self.vi_split is None or self.vi_merge is None else self.vi_split + self.vi_merge


def front(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The trials on the front, by increasing VI split."""
    return sorted((r for r in records if r.on_front), key=lambda r: (r.vi_split, r.number))


def best(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The front's trial with the smallest VI sum (the lower number on a tie); None on an empty front."""
    on_front = front(records)
    return min(on_front, key=lambda r: (r.vi_sum, r.number)) if on_front else None


def searched_keys(records: Sequence[TrialRecord]) -> list[str]:
    """Every searched key, in order of first appearance."""
    keys: dict[str, None] = {}
    for record in records:
        keys.update(dict.fromkeys(record.params))
    return list(keys)


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_front(records: Sequence[TrialRecord], keys: Sequence[str] | None = None) -> str:
    """A fixed-width table of the front: trial, VI split, VI merge, VI sum, adapted Rand, the searched values."""
    keys = list(keys) if keys is not None else searched_keys(records)
    rows = [["trial", "VI split", "VI merge", "VI sum", "arand", *keys]]
    for r in front(records):
        rows.append([str(r.number), f"{r.vi_split:.4f}", f"{r.vi_merge:.4f}", f"{r.vi_sum:.4f}",
                     f"{r.arand:.4f}" if r.arand is not None else "", *[_value(r.params.get(k, "")) for k in keys]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    if len(rows) == 1:
        lines.append("(no completed trial yet)")
    return "\n".join(lines)


def summary_line(records: Sequence[TrialRecord]) -> str:
    """How many trials are complete, pruned and failed."""
    counts = {state: sum(r.state == state for r in records) for state in ("COMPLETE", "PRUNED", "FAIL")}
    return (f"{len(records)} finished trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
            f"{counts['FAIL']} failed; {len(front(records))} on the Pareto front")


def write_csv(records: Sequence[TrialRecord], path: str | Path, keys: Sequence[str] | None = None) -> None:
    """Every finished trial, one row each, with an ``on_front`` column."""
    keys = list(keys) if keys is not None else searched_keys(records)
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", "on_front", "vi_split", "vi_merge", "vi_sum", "arand", "pruned_at_step",
                         *keys, "error"])
        for r in sorted(records, key=lambda r: r.number):
            writer.writerow([r.number, r.state, r.on_front, *["" if v is None else v for v in
                             (r.vi_split, r.vi_merge, r.vi_sum, r.arand, r.pruned_at)],
                             *[r.params.get(k, "") for k in keys],
                             (r.error or "").strip().splitlines()[-1] if r.error else ""])


def plot(records: Sequence[TrialRecord], path: str | Path, title: str,
         references: Mapping[str, tuple[float, float]] | None = None) -> None:
    """VI merge against VI split: every complete trial, the front highlighted, pruned trials at their
    last validation, and labelled reference points (e.g. a baseline's validation scores)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=120, facecolor="white")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    complete = [r for r in records if r.state == "COMPLETE"]
    pruned = [r for r in records if r.state == "PRUNED" and r.last_validation is not None]
    if pruned:
        axes.scatter([r.last_validation[0] for r in pruned], [r.last_validation[1] for r in pruned], marker="x",
                     color="0.6", label="pruned (last validation)")
    axes.scatter([r.vi_split for r in complete], [r.vi_merge for r in complete], color="0.45", label="trial")
    on_front = front(records)
    if on_front:
        axes.step([r.vi_split for r in on_front], [r.vi_merge for r in on_front], where="post", color="tab:red",
                  alpha=0.6)
        axes.scatter([r.vi_split for r in on_front], [r.vi_merge for r in on_front], color="tab:red", zorder=3,
                     label="Pareto front")
        for r in on_front:
            axes.annotate(str(r.number), (r.vi_split, r.vi_merge), textcoords="offset points", xytext=(4, 4),
                          fontsize=8)
    for label, (split, merge_) in (references or {}).items():
        axes.scatter([split], [merge_], marker="*", s=140, color="black", zorder=4)
        axes.annotate(label, (split, merge_), textcoords="offset points", xytext=(6, -10), fontsize=8)
    axes.set_xlabel("VI split (bits, validation volume)")
    axes.set_ylabel("VI merge (bits, validation volume)")
    axes.set_title(title)
    if complete or pruned:
        axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")


def best_overrides(record: TrialRecord, fixed: Mapping) -> dict:
    """The params.yaml override of a trial: the study's fixed overrides plus its searched values, nested."""
    return merge(dict(fixed), nest(dict(record.params)))


def write_best(record: TrialRecord, fixed: Mapping, path: str | Path, study: str) -> dict:
    """Writes :func:`best_overrides` as YAML, for ``melecole overrides FILE`` and ``dvc exp run -S``."""
    overrides = best_overrides(record, fixed)
    header = (f"# Study {study}, trial {record.number}: the Pareto front's smallest VI sum on the validation volume\n"
              f"# (VI split {record.vi_split:.4f}, VI merge {record.vi_merge:.4f}). Run it:\n"
              f"#   dvc exp run -n {study}-trial-{record.number} $(melecole overrides {Path(path).as_posix()})\n")
    with atomic_output(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(overrides, sort_keys=False))
    return overrides
