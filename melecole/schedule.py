"""Learning-rate schedules: linear warm-up, then constant, cosine, or cosine with warm restarts.

The schedule is a pure function of the step, wrapped in ``LambdaLR`` so its position is part of
the scheduler's ``state_dict`` (a plain dict of numbers: checkpoints stay ``weights_only``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Schedule = Literal["constant", "cosine", "cosine_restarts"]


def lr_factor(step: int, schedule: Schedule, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0,
              restart_steps: int = 0, restart_mult: int = 1) -> float:
    """The learning rate of optimiser step ``step`` (0 = the first) as a fraction of the base rate.

    Warm-up rises linearly, ``(step + 1) / warmup_steps``, so the first step already moves.
    After it, ``constant`` stays at 1; ``cosine`` falls from 1 to ``min_factor`` over the
    remaining steps; ``cosine_restarts`` does the same over cycles of ``restart_steps`` steps
    (0 = one cycle over the remaining steps), each ``restart_mult`` times longer than the last,
    jumping back to 1 at every restart (SGDR, Loshchilov and Hutter 2017).

    Args:
        step: optimiser steps already taken.
        schedule: ``"constant"``, ``"cosine"`` or ``"cosine_restarts"``.
        total_steps: optimiser steps of the whole run.
        warmup_steps: length of the linear warm-up.
        min_factor: the factor at the end of each cosine cycle.
        restart_steps: the first cycle's length.
        restart_mult: growth of each cycle's length.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    position = step - warmup_steps
    remaining = max(total_steps - warmup_steps, 1)
    if schedule == "cosine":
        length = remaining
    elif schedule == "cosine_restarts":
        length = restart_steps or remaining
        while position >= length:
            position -= length
            length *= restart_mult
    else:
        raise ValueError(f"unknown schedule '{schedule}'; expected constant, cosine or cosine_restarts")
    progress = min(position / length, 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule, total_steps: int, warmup_steps: int = 0,
                    min_factor: float = 0.0, restart_steps: int = 0,
                    restart_mult: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_factor`; call its ``step()`` after every optimiser step."""

    def factor(step: int) -> float:
        return lr_factor(step, schedule, total_steps, warmup_steps, min_factor, restart_steps, restart_mult)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
