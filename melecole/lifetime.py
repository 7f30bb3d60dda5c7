"""Processes that die with their parent, however the parent dies (SIGKILL and the OOM killer included).

A helper process (a DataLoader worker, a DDP rank, a search's training) left running after its
parent was killed keeps memory, keeps writing the files the next run writes, and keeps open the
pipes a caller waits on. Linux's parent-death signal ends it; elsewhere nothing happens.
Kept free of heavy imports: the search's launch shim imports it before every training.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> bool:
    """Asks the kernel to send ``sig`` to this process when its parent dies.

    Args:
        sig: the signal sent then.
        parent: the pid the parent had when this process was started; if given and this process
            already has another parent, the parent died before the signal was armed.

    Returns:
        False if ``parent`` is given and already gone (the caller should exit); True otherwise,
        also where the platform has no parent-death signal.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    return parent is None or os.getppid() == parent
