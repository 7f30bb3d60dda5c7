"""Training as a watched subprocess: its validation log is read as it grows and it can be stopped early.

The training command runs in a process group of its own, so stopping it reaches torchrun (which
passes the signal on to its ranks, and they also die with it). It also dies with the search
(:mod:`melecole.tuning.launch`): the kernel sends it SIGTERM when the worker that started it
dies, even by SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class TrainingOutcome:
    """How a watched training run ended.

    Attributes:
        status: ``finished`` (exit 0), ``failed`` (non-zero exit) or ``pruned`` (stopped on request).
        returncode: the exit status (negative: killed by that signal).
        step: for ``pruned``, the validation step at which it was stopped.
        error: for ``failed``, the end of the training log.
    """

    status: Literal["finished", "failed", "pruned"]
    returncode: int
    step: int | None = None
    error: str | None = None


class LogReader:
    """Reads the complete JSON lines appended to a file since the last call."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0

    def new_records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self._offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def orphan_proof(command: Sequence[str]) -> list[str]:
    """``command`` behind :mod:`melecole.tuning.launch`, so that it dies with this process."""
    return [sys.executable, "-m", "melecole.tuning.launch", str(os.getpid()), *command]


def tail(path: str | Path, lines: int = 15) -> str:
    """The last ``lines`` non-empty lines of a text file ('' if there is none)."""
    path = Path(path)
    if not path.is_file():
        return ""
    kept = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def stop_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the process group of ``process``; SIGKILL if it is not gone after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def run_watched(command: Sequence[str], log_path: str | Path, validation_log: str | Path,
                on_validation: Callable[[dict], bool], *, cwd: str | Path | None = None,
                env: Mapping[str, str] | None = None, poll_seconds: float = 0.5) -> TrainingOutcome:
    """Runs ``command`` with its output in ``log_path``, calling ``on_validation(record)`` per new log line.

    Args:
        command: the training command line.
        log_path: receives the command's stdout and stderr.
        validation_log: the JSON-lines file the command appends validations to.
        on_validation: called with each new record; returning True stops the run (pruned).
        cwd: working directory of the command.
        env: its environment.
        poll_seconds: how often the validation log is read.

    On KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by the caller) the run is stopped
    before the exception goes on.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    reader = LogReader(validation_log)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(orphan_proof(command), cwd=cwd, env=dict(env) if env is not None else None,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        while True:
            done = process.poll() is not None
            for record in reader.new_records():
                if on_validation(record):
                    stop_group(process)
                    return TrainingOutcome("pruned", process.returncode, step=int(record["step"]))
            if done:
                break
            time.sleep(poll_seconds)
    except BaseException:
        stop_group(process)
        raise
    if process.returncode == 0:
        return TrainingOutcome("finished", 0)
    return TrainingOutcome("failed", process.returncode,
                           error=tail(log_path) or f"training exited with status {process.returncode}")
