"""Runs block functions as daisy tasks: local worker processes, or workers started by a launcher
on other machines; finished blocks are recorded so a killed run resumes.

The only module that imports daisy (funkelab daisy v2). A task's block function receives the
block's write region as slices; it must be picklable (a module-level class instance holding
paths and plain parameters), because daisy ships it to every worker process.
"""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cloudpickle

from melecole.errors import MelecoleError

Triple = tuple[int, int, int]
Region = tuple[slice, slice, slice]
BlockFunction = Callable[[Region], None]

# Blocks are expected to take minutes on a CPU; daisy's default of 600 s would kill slow ones.
DEFAULT_BLOCK_TIMEOUT = 24 * 3600.0


@dataclass(frozen=True)
class Scheduling:
    """How blocks are run.

    Attributes:
        workers: worker processes (1 runs every block in this process).
        host: address the scheduler listens on and workers connect to; 127.0.0.1 keeps it private
            to this machine, a name or address of this host lets workers on others connect.
        launcher: command prefix that starts one worker elsewhere (e.g. ``srun -N1 -n1`` or
            ``ssh node``); the worker runs ``python -m melecole.blockwise.worker FILE`` there and
            needs the same file system. None starts local processes.
        timeout: seconds a block may take before daisy kills its worker and retries it.
        progress: show daisy's progress bar (blocks done, rate, ETA) on stderr.
    """

    workers: int = 1
    host: str = "127.0.0.1"
    launcher: Sequence[str] | None = None
    timeout: float = DEFAULT_BLOCK_TIMEOUT
    progress: bool = True
    retries: int = 2
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BlockTask:
    """One stage's blocks: write regions of ``block`` voxels over a ``shape`` volume.

    ``context`` grows each block's read region: daisy then never runs two blocks at once whose
    read and write regions overlap (``read_write_conflict``), as a task reading its own output
    needs.
    """

    name: str
    shape: Triple
    block: Triple
    function: BlockFunction
    context: Triple = (0, 0, 0)
    read_write_conflict: bool = False


def _roi(offset: Sequence[int], shape: Sequence[int]):
    from funlib.geometry import Roi

    return Roi(tuple(int(o) for o in offset), tuple(int(s) for s in shape))


def region_of(roi) -> Region:
    """A daisy ROI as slices."""
    return tuple(slice(int(b), int(e)) for b, e in zip(roi.begin, roi.end))


class _OnBlock:
    """daisy's block function: hands the block's write region to ours."""

    def __init__(self, function: BlockFunction):
        self.function = function

    def __call__(self, block) -> None:
        self.function(region_of(block.write_roi))


class _LaunchedWorker:
    """daisy's worker function when a launcher starts the workers: runs the launcher, whose
    process connects back to the scheduler (DAISY_CONTEXT in its environment) and runs blocks."""

    def __init__(self, launcher: Sequence[str], payload: Path):
        self.launcher = list(launcher)
        self.payload = str(payload)

    def __call__(self) -> None:
        # The scheduler's address travels as an argument too (base64, shell-safe): ssh and some
        # batch systems do not pass the environment on.
        context = base64.urlsafe_b64encode(os.environ.get("DAISY_CONTEXT", "").encode()).decode()
        command = [*self.launcher, sys.executable, "-m", "melecole.blockwise.worker", self.payload, context]
        status = subprocess.run(command, env=os.environ.copy()).returncode
        if status != 0:
            raise RuntimeError(f"worker command {shlex.join(command)} exited with status {status}")


def serve_blocks(payload: str | Path, context: str | None = None) -> None:
    """The worker side of a launcher: runs blocks of the scheduler until none are left
    (``python -m melecole.blockwise.worker FILE [CONTEXT]``); the scheduler's address comes from
    ``context`` (base64 of daisy's context string) or else from DAISY_CONTEXT."""
    import daisy

    if context:
        os.environ["DAISY_CONTEXT"] = base64.urlsafe_b64decode(context.encode()).decode()

    with open(payload, "rb") as handle:
        function = cloudpickle.load(handle)
    client = daisy.Client()
    while True:
        with client.acquire_block() as block:
            if block is None:
                return
            function(block)


def run_task(task: BlockTask, workdir: str | Path, scheduling: Scheduling) -> dict[str, int]:
    """Runs every block of ``task`` not recorded as done under ``workdir`` (daisy's done markers).

    Returns:
        ``blocks``, ``done_before`` (skipped: finished by an earlier, interrupted run) and
        ``processed`` counts.

    Raises:
        MelecoleError: when a block fails for good, with the first worker error.
    """
    import daisy
    import daisy.logging

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    daisy.logging.set_log_basedir(workdir / "logs")
    read_roi = _roi([-c for c in task.context], [b + 2 * c for b, c in zip(task.block, task.context)])
    write_roi = _roi((0, 0, 0), task.block)
    on_block = _OnBlock(task.function)
    process = on_block
    if scheduling.launcher:
        payload = workdir / f"{task.name}.worker.pkl"
        payload.write_bytes(cloudpickle.dumps(on_block))
        process = _LaunchedWorker(scheduling.launcher, payload)
    total_read = _roi([-c for c in task.context], [s + 2 * c for s, c in zip(task.shape, task.context)])
    # total_roi is the read extent; write regions tile the volume, cut at its end ("shrink").
    daisy_task = daisy.Task(
        task_id=task.name, total_roi=total_read, read_roi=read_roi, write_roi=write_roi,
        process_function=process, read_write_conflict=task.read_write_conflict, fit="shrink",
        max_workers=max(1, scheduling.workers), max_retries=scheduling.retries, timeout=scheduling.timeout,
        tracking_path=str(workdir / "done" / task.name))
    parallel = scheduling.workers > 1 or bool(scheduling.launcher)
    states = daisy.run_blockwise([daisy_task], multiprocessing=parallel, progress=scheduling.progress,
                                 summary=False, return_states=True, host=scheduling.host if parallel else None)
    state = states[task.name]
    if state.completed_count != state.total_block_count:
        reason = state.first_worker_error or state.last_worker_error or state.abandon_reason or "see the worker logs"
        raise MelecoleError(f"{task.name}: {state.failed_count + state.orphaned_count} of {state.total_block_count} "
                            f"blocks failed (logs in {workdir / 'logs'}): {reason.strip().splitlines()[-1]}")
    return {"blocks": state.total_block_count, "done_before": state.skipped_count,
            "processed": state.total_block_count - state.skipped_count}
