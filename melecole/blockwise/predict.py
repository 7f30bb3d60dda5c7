"""The predict stage's block function: one block of the output through the model, written as it
is stored (uint8 probabilities, float16 embedding).

A worker loads the model and opens the volumes once, at its first block. The block's prediction
is :func:`melecole.inference.region.predict_region`, the same function the whole-volume path
calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from melecole.data.normalize import Intensity, apply_normalisation
from melecole.inference.encoding import encode
from melecole.inference.region import TilePredictor, predict_region
from melecole.inference.tiling import Region, TileGrid


@dataclass
class PredictBlocks:
    """Predicts the blocks handed to it and writes them into the output container.

    Attributes:
        checkpoint: path of the checkpoint (absolute: workers may start elsewhere).
        raw: the raw volume's address (``FILE[:dataset]`` text).
        out: the output container (its datasets already created).
        stats: the raw volume's intensity statistics (computed once, before any block).
        patch, overlap, batch_size, augment, metric: inference settings.
        offsets: affinity offsets.
        datasets: names of the output datasets to fill.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        threads: torch CPU threads per worker (0 keeps torch's default).
    """

    checkpoint: str
    raw: str
    out: str
    stats: Intensity
    patch: tuple[int, int, int]
    overlap: tuple[int, int, int]
    batch_size: int
    augment: str
    metric: str
    offsets: list[tuple[int, int, int]]
    datasets: list[str]
    device: str = "auto"
    threads: int = 0
    _state: dict = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_state"] = {}  # models and open files stay in the process that made them
        return state

    def _setup(self) -> dict:
        if self._state:
            return self._state
        from melecole.checkpoint import load_model
        from melecole.io import open_container, open_volume
        from melecole.inference.device import resolve_device

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        model, trained_with, _ = load_model(self.checkpoint, resolve_device(self.device))
        model.eval()
        loss = trained_with["train"]["loss"]
        raw = open_volume(self.raw, ndim=3)
        self._state.update(
            raw=raw,
            grid=TileGrid.of(raw.shape, self.patch, self.overlap),
            predictor=TilePredictor(model, self.patch, self.offsets, loss["delta_d"], loss["norm"], self.augment,
                                    self.metric, keep_embedding="embedding" in self.datasets),
            container=open_container(self.out, mode="a"),
        )
        return self._state

    def close(self) -> None:
        """Closes the files this process opened (the in-process run's, before the rename)."""
        if self._state:
            self._state["container"].close()
            self._state["raw"].close()
            self._state.clear()

    def __call__(self, region: Region) -> None:
        state = self._setup()
        raw = state["raw"]
        result = predict_region(state["predictor"], lambda r: apply_normalisation(raw.read(r), self.stats),
                                state["grid"], region, self.batch_size)
        start = tuple(r.start for r in region)
        for name in self.datasets:
            values = result.pop(name)  # each float output freed once written
            dataset = state["container"].dataset(name)
            dataset.write(start, encode(name, values))
            del values
