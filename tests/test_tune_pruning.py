"""The median stopping rule and the shared trial budget, on hand-made tables."""

from __future__ import annotations

import pytest

from melecole.tuning.budget import Slot, decide, finished, running, within_budget
from melecole.tuning.pruning import median_at, should_prune, vi_curve

# VI-sum curves of three completed trials: medians 2.0 at step 100, 1.5 at step 200, (1.0 + 1.2) / 2 at 300.
COMPLETED = [{100: 3.0, 200: 1.5, 300: 1.0}, {100: 2.0, 200: 1.4}, {100: 1.0, 200: 2.0, 300: 1.2}]


def test_vi_curve_sums_split_and_merge_and_keeps_the_latest_of_a_step():
    records = [{"step": 10, "vi_split": 0.5, "vi_merge": 0.25, "arand": 0.1},
               {"step": 20, "vi_split": 1.0, "vi_merge": 1.0},
               {"step": 10, "vi_split": 0.25, "vi_merge": 0.25}]
    assert vi_curve(records) == {10: 0.5, 20: 2.0}


@pytest.mark.parametrize("step, median, count", [(100, 2.0, 3), (200, 1.5, 3), (300, 1.1, 2), (400, None, 0)])
def test_median_at(step, median, count):
    found, n = median_at(step, COMPLETED)
    assert n == count and (found == pytest.approx(median) if median is not None else found is None)


@pytest.mark.parametrize("value, step, startup, warmup, expected", [
    (2.1, 100, 3, 0, True),    # above the median 2.0
    (2.0, 100, 3, 0, False),   # equal to the median: kept
    (1.9, 100, 3, 0, False),   # below
    (1.6, 200, 3, 0, True),
    (1.2, 300, 3, 0, False),   # only 2 completed trials reached step 300
    (1.2, 300, 2, 0, True),    # ... enough with startup 2 (median 1.1)
    (9.0, 400, 0, 0, False),   # no completed trial reached step 400: nothing to compare with
    (9.0, 100, 4, 0, False),   # fewer completed trials than startup_trials
    (9.0, 100, 0, 0, True),    # startup 0 still needs one trial, and there are three
    (2.1, 100, 3, 101, False),  # within the warm-up
    (2.1, 100, 3, 100, True),   # the warm-up ends at its step
    (float("nan"), 100, 3, 0, True),
])
def test_should_prune(value, step, startup, warmup, expected):
    assert should_prune(value, step, COMPLETED, startup, warmup) is expected


def test_nothing_is_pruned_without_completed_trials():
    assert should_prune(100.0, 100, [], 0, 0) is False


def test_the_budget_counts_finished_trials_once():
    slots = [Slot(0, "FAIL"), Slot(1, "COMPLETE"), Slot(2, "FAIL", replaces=0), Slot(3, "RUNNING"),
             Slot(4, "PRUNED"), Slot(5, "FAIL", surplus=True), Slot(6, "WAITING", replaces=2)]
    # 0 was retried by 2, 2 by 6: neither counts; 5 is surplus; 1 and 4 are finished.
    assert finished(slots) == 2 and running(slots) == 1
    assert decide(slots, 4) == "run"
    assert decide(slots, 3) == "wait"   # the running trial may be the third
    assert decide(slots, 2) == "stop"


@pytest.mark.parametrize("number, budget, expected", [(3, 4, True), (3, 3, False), (1, 2, True), (1, 1, False), (0, 1, True)])
def test_within_budget_orders_trials_by_number(number, budget, expected):
    slots = [Slot(0, "COMPLETE"), Slot(1, "RUNNING"), Slot(2, "RUNNING"), Slot(3, "RUNNING")]
    assert within_budget(slots, number, budget) is expected


def test_a_retry_fits_where_its_original_was():
    slots = [Slot(0, "FAIL"), Slot(1, "COMPLETE"), Slot(2, "RUNNING", replaces=0)]
    assert within_budget(slots, 2, 2) and decide(slots, 2) == "wait"
    assert decide([*slots[:2], Slot(2, "COMPLETE", replaces=0)], 2) == "stop"
