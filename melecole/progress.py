"""What a training run shows while it runs: a progress bar on stderr and buffered metric logging."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TextIO

from tqdm import tqdm


def work_bar(total: int, desc: str, unit: str, enabled: bool = True, stream: TextIO | None = None) -> tqdm:
    """A tqdm bar of ``total`` units of work (tiles, blocks) with rate and ETA, on stderr; redrawn
    every second on a terminal, every 30 seconds in a log file."""
    stream = stream or sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, mininterval=1.0 if interactive else 30.0,
                file=stream, disable=not enabled, leave=False)


class ProgressBar:
    """A tqdm bar of optimiser steps with the latest loss and patches/s; tqdm adds the rate and ETA.

    Call it as ``bar(step, figures)`` after every step (``figures`` from the last log, or None)
    and ``close()`` at the end. Disabled, it does nothing (every rank but 0).
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, stream: TextIO | None = None):
        stream = stream or sys.stderr
        # Redrawn every second on a terminal; in a log file (DVC, CI) one line every 30 seconds.
        interactive = hasattr(stream, "isatty") and stream.isatty()
        self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                         mininterval=1.0 if interactive else 30.0, file=stream, disable=not enabled, desc="train")

    def __call__(self, step: int, figures: Mapping[str, float] | None) -> None:
        self._bar.update(step - self._bar.n)
        if figures:
            self._bar.set_postfix(loss=f"{figures['train_loss']:.4f}",
                                  patches_s=f"{figures['patches_per_second']:.2f}", refresh=False)

    def close(self) -> None:
        self._bar.close()


class MetricBuffer:
    """Holds logged metrics until :meth:`flush` hands them to ``sink(metrics, step)``.

    Training flushes right before writing each periodic checkpoint: a run killed later and
    resumed from that checkpoint logs the following steps again, and they were never sent, so
    the history has each step once. With ``hold=False`` (no checkpoints) metrics go out at once.
    """

    def __init__(self, sink: Callable[[Mapping[str, float], int], None], hold: bool = True):
        self.sink = sink
        self.hold = hold
        self.pending: list[tuple[dict[str, float], int]] = []

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        self.pending.append((dict(metrics), step))
        if not self.hold:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            metrics, step = self.pending[0]
            self.sink(metrics, step)
            self.pending.pop(0)
