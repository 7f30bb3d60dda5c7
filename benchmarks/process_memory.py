"""Peak resident memory of a command and of every process it starts, sampled from /proc."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def _rss_and_parents() -> tuple[dict[int, int], dict[int, int]]:
    rss, parents = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(stat[1])
            rss[int(entry.name)] = int(stat[21]) * 4096  # resident pages
        except (OSError, IndexError, ValueError):
            continue
    return rss, parents


def run_measured(command: list[str], cwd: str | Path | None = None, interval: float = 0.5) -> dict:
    """Runs ``command`` and samples its process tree until it ends.

    Returns:
        ``seconds`` (wall), ``returncode``, ``peak_process_bytes`` (the largest resident set of
        any one process of the tree) and ``peak_total_bytes`` (the largest sum over the tree).
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_one, peak_total = 0, 0
    while process.poll() is None:
        rss, parents = _rss_and_parents()
        tree, frontier = {process.pid}, {process.pid}
        while frontier:
            frontier = {child for child, parent in parents.items() if parent in frontier} - tree
            tree |= frontier
        sizes = [rss.get(pid, 0) for pid in tree]
        peak_one, peak_total = max(peak_one, max(sizes)), max(peak_total, sum(sizes))
        time.sleep(interval)
    out, err = process.communicate()
    return {"seconds": round(time.perf_counter() - start, 1), "returncode": process.returncode,
            "peak_process_bytes": peak_one, "peak_total_bytes": peak_total, "stdout": out, "stderr_tail": err[-2000:]}
