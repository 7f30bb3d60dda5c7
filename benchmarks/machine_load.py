"""The machine-load figures every benchmark reports beside its rates."""

from __future__ import annotations

import os


def load_report(load_before: tuple[float, float, float], cores: int, what: str) -> dict:
    """Load averages before and after a benchmark, and a note when others already loaded the CPU.

    Only the load *before* the run tells of other processes: the benchmark's own work raises the
    load average it leaves behind.
    """
    load_after = os.getloadavg()
    report = {"load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)}}
    if load_before[0] >= 0.5 * cores:
        report["note"] = (f"machine loaded before the run (1-min load average {load_before[0]:.2f} on {cores} "
                          f"cores): other processes share the CPU, so {what}")
    return report
