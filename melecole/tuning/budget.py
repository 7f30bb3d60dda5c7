"""How many trials a study holds, so that every worker of a study shares one ``--trials N``.

A study is done when it holds N finished trials: complete, pruned or failed. Two kinds of
trials do not count. A trial whose worker died (failed by the heartbeat check) is *superseded*
by the retry Optuna queues for it with the same parameters. A *surplus* trial is one a worker
started while another was starting the N-th: it is failed at once, before any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
Decision = Literal["run", "wait", "stop"]


@dataclass(frozen=True)
class Slot:
    """What the budget needs to know about one trial.

    Attributes:
        number: the trial number.
        state: Optuna's state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING).
        replaces: for a retry, the number of the trial it repeats.
        surplus: started beyond the budget and failed at once.
    """

    number: int
    state: str
    replaces: int | None = None
    surplus: bool = False


def _counted(slots: Sequence[Slot]) -> list[Slot]:
    superseded = {slot.replaces for slot in slots if slot.replaces is not None}
    return [slot for slot in slots
            if not slot.surplus and not (slot.state == "FAIL" and slot.number in superseded)]


def finished(slots: Sequence[Slot]) -> int:
    """Finished trials that count towards the budget."""
    return sum(slot.state in FINISHED for slot in _counted(slots))


def running(slots: Sequence[Slot]) -> int:
    """Trials running now (on any worker) that count towards the budget."""
    return sum(slot.state == "RUNNING" for slot in _counted(slots))


def decide(slots: Sequence[Slot], budget: int) -> Decision:
    """``stop`` when the budget is reached, ``wait`` while running trials may still reach it, else ``run``.

    Waiting (instead of stopping) matters when a running trial belongs to a worker that died:
    once its heartbeat is stale it fails and its retry is queued, which this worker then runs.
    """
    done = finished(slots)
    if done >= budget:
        return "stop"
    return "wait" if done + running(slots) >= budget else "run"


def within_budget(slots: Sequence[Slot], number: int, budget: int) -> bool:
    """Whether trial ``number``, just started, is among the first ``budget`` counted trials.

    Trials with smaller numbers that are finished or running come first; a trial that does not
    fit is surplus.
    """
    ahead = [slot for slot in _counted(slots)
             if slot.number < number and (slot.state in FINISHED or slot.state == "RUNNING")]
    return len(ahead) < budget
