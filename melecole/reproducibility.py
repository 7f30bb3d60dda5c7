"""The same CPU kernels on every x86-64 machine, so a run's weights and figures reproduce elsewhere.

PyTorch chooses its CPU code by the instruction set of the machine it runs on, in three places:
ATen's vectorised kernels (``ATEN_CPU_CAPABILITY``), oneDNN's JIT convolutions
(``ONEDNN_MAX_CPU_ISA``) and MKL's matrix products (``MKL_CBWR``, which also makes MKL's
reductions and scheduling deterministic). An AVX-512 path and an AVX2 path add the same numbers
in different orders, so the same seed trains different weights on an AVX-512 Xeon and on an
AVX2-only CPU (older Intel, AMD), and the segmentation and its VI differ after a full run.
:func:`pin_cpu_kernels` asks all three for code every x86-64 CPU with AVX2 runs alike; it must run
before torch computes anything (the libraries read these variables once, at their first use), so
the ``melecole`` command calls it first thing. Child processes (torchrun ranks, DataLoader
workers, blockwise workers, tuning trials) inherit the environment.

It is opt-in (``MELECOLE_PORTABLE_KERNELS=1``): measured on an AVX-512 Xeon with the default
model, the portable kernels train at about half the speed (2.0-2.2x the CPU time per step; oneDNN
capped at AVX2 alone costs 1.5x), too much to impose on every run. Without it each library keeps
its own choice, which is deterministic on one kind of CPU.

Only the CPU is concerned: CUDA kernels read none of these variables.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping

PORTABLE = "MELECOLE_PORTABLE_KERNELS"
"""Set to 1 for the same kernels on every x86-64 CPU with AVX2 (reproducible across machines, slower)."""

PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",
    # AVX-512 and AMX kernels sum convolutions in other orders than AVX2 ones; AVX2 is a ceiling, so
    # older CPUs keep their own (and differ, as they must).
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # Intel's AVX2 branch is for Intel CPUs only (MKL falls back to its automatic choice on AMD);
    # COMPATIBLE is one SSE2 path that gives the same results on every x86-64 CPU.
    "MKL_CBWR": "COMPATIBLE",
}
"""The variables set and their values."""

_X86_64 = {"x86_64", "amd64", "x64"}


def pin_cpu_kernels(environ: MutableMapping[str, str] | None = None, machine: str | None = None) -> dict[str, str]:
    """With ``MELECOLE_PORTABLE_KERNELS=1``, sets :data:`PINNED` in ``environ`` (default
    ``os.environ``) where it is not set yet; without it, nothing.

    A variable the user set keeps its value. Other architectures than x86-64 (``machine``,
    default ``platform.machine()``) are left alone: their kernels have no AVX paths to pin.

    Returns:
        the variables this call set, with their values.
    """
    environ = os.environ if environ is None else environ
    machine = platform.machine() if machine is None else machine
    if environ.get(PORTABLE, "").strip() in ("", "0") or machine.lower() not in _X86_64:
        return {}
    added = {name: value for name, value in PINNED.items() if name not in environ}
    environ.update(added)
    return added
