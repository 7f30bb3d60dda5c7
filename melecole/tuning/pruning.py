"""The median stopping rule on intermediate validation VI, as pure functions.

Optuna's pruners work on ``trial.report`` values, which it does not accept in multi-objective
studies. So the search scalarises the two objectives for stopping only: a trial whose VI sum
(split + merge) at a validation step is above the median of the completed trials' VI sums at
the same step is stopped. Like Optuna's ``MedianPruner``, nothing is stopped before
``startup_trials`` completed trials have a value at that step, nor below ``warmup_steps``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

Curve = Mapping[int, float]  # validation step -> VI sum


def vi_curve(records: Iterable[Mapping]) -> dict[int, float]:
    """Validation-log records (``step``, ``vi_split``, ``vi_merge``) -> {step: VI sum}.

    A step validated twice (a resumed training run) keeps its latest value.
    """
    curve: dict[int, float] = {}
    for record in records:
        curve[int(record["step"])] = float(record["vi_split"]) + float(record["vi_merge"])
    return curve


def median_at(step: int, completed: Sequence[Curve]) -> tuple[float | None, int]:
    """The median VI sum of the completed curves that reached ``step``, and how many did."""
    values = [curve[step] for curve in completed if step in curve]
    return (statistics.median(values) if values else None), len(values)


def should_prune(value: float, step: int, completed: Sequence[Curve], startup_trials: int,
                 warmup_steps: int) -> bool:
    """True when a trial with VI sum ``value`` at ``step`` should stop.

    Args:
        value: the trial's VI sum at ``step`` (lower is better); a non-finite value always stops.
        step: the validation step.
        completed: the VI-sum curves of the study's completed trials.
        startup_trials: completed trials needed at ``step`` before anything is stopped there (at
            least one is always needed).
        warmup_steps: steps below this are never judged.
    """
    if step < warmup_steps:
        return False
    if not math.isfinite(value):
        return True
    median, count = median_at(step, completed)
    if median is None or count < max(1, startup_trials):
        return False
    return value > median
