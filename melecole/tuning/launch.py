"""``python -m melecole.tuning.launch PARENT_PID COMMAND...``: runs COMMAND so that it dies with its parent.

The search starts training through this shim rather than with ``preexec_fn``, which is unsafe
in a process with threads (Optuna's heartbeat runs in one). The kernel's parent-death signal
survives ``exec``, so COMMAND receives SIGTERM when the search worker dies, however it dies.
Kept free of heavy imports (torch), since it runs before every training.
"""

from __future__ import annotations

import os
import signal
import sys

from melecole.lifetime import die_with_parent


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m melecole.tuning.launch PARENT_PID COMMAND...", file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[1:]
    if not die_with_parent(signal.SIGTERM, parent):
        return 1  # the parent died before the signal was armed
    os.execvp(command[0], command)
    return 1  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
