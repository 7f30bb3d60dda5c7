"""Training batches from DataLoader workers, in an order a resumed run can reproduce exactly.

The stream of augmented patches is cut into epochs of ``steps_per_epoch`` optimiser steps, the
interval between periodic checkpoints. Each epoch starts fresh workers seeded by
``(seed, epoch, worker)`` (see :class:`~melecole.data.loader.PatchStream`), so a run resumed
from the checkpoint at step ``k * steps_per_epoch`` draws the very patches the uninterrupted run
drew from there on. The same seed and number of workers give the same run.
"""

from __future__ import annotations

import torch

from melecole.data.loader import PatchStream, make_loader
from melecole.errors import MelecoleError


class LoaderFeed:
    """Hands out training batches produced by ``workers`` DataLoader processes.

    Args:
        stream: the patch stream (endless: ``patches_per_epoch`` None).
        batch_size: patches per micro-batch.
        workers: DataLoader worker processes (at least 1).
        steps_per_epoch: optimiser steps per epoch (the checkpoint interval); None = one epoch.
        start_step: optimiser steps already taken (a resumed run), a multiple of ``steps_per_epoch``.
        accumulate: micro-batches per optimiser step.
    """

    def __init__(self, stream: PatchStream, batch_size: int, workers: int, steps_per_epoch: int | None,
                 start_step: int = 0, accumulate: int = 1):
        if workers < 1:
            raise ValueError(f"LoaderFeed needs at least one worker, got {workers}")
        if stream.patches_per_epoch is not None:
            raise ValueError("LoaderFeed cuts the stream into epochs itself; give an endless PatchStream")
        if steps_per_epoch and start_step % steps_per_epoch:
            raise MelecoleError(f"cannot resume loader workers at step {start_step}: not a multiple of the "
                                f"checkpoint interval {steps_per_epoch}")
        self.stream = stream
        self.batch_size = batch_size
        self.workers = workers
        self.batches_per_epoch = steps_per_epoch * accumulate if steps_per_epoch else None
        self.epoch = start_step // steps_per_epoch if steps_per_epoch else 0
        self.drawn = 0
        self._batches = None

    def _start_epoch(self) -> None:
        self.stream.set_epoch(self.epoch)
        self._batches = iter(make_loader(self.stream, self.batch_size, self.workers))
        self.drawn = 0

    def next_batch(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The next micro-batch, moved to ``device``."""
        if self._batches is None:
            self._start_epoch()
        elif self.batches_per_epoch is not None and self.drawn == self.batches_per_epoch:
            self.epoch += 1
            self._batches = None  # lets the previous epoch's workers shut down
            self._start_epoch()
        batch = next(self._batches)
        self.drawn += 1
        return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
