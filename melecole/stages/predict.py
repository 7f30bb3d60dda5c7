"""predict: checkpoint + raw volume -> embeddings, boundary probabilities and affinities (HDF5)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from melecole.checkpoint import load_model
from melecole.config import Params
from melecole.data.normalize import normalize_raw
from melecole.inference.volume import predict_volume
from melecole.io import VolumeSpec, read_volume, write_volumes
from melecole.stages.train import resolve_device


def predict(params: Params, checkpoint: str | Path, raw_spec: VolumeSpec, out: str | Path) -> dict:
    """Writes ``embedding``, ``boundary`` and ``affinities`` to ``out``; returns timing figures.

    The affinity margin and norm come from the checkpoint (the loss the model was trained
    with); patch, overlap and offsets come from ``params``. The offsets are stored as an
    attribute so ``segment`` uses exactly the channels that were computed.
    """
    device = resolve_device(params.train.device)
    model, trained_with, facts = load_model(checkpoint, device)
    loss = trained_with["train"]["loss"]
    raw = normalize_raw(read_volume(raw_spec), str(raw_spec))
    start = time.perf_counter()
    cfg = params.predict
    with torch.inference_mode():
        outputs = predict_volume(model, raw, cfg.patch, cfg.overlap, cfg.batch_size, params.segment.offsets,
                                 loss["delta_d"], loss["norm"], cfg.augment, cfg.affinity)
    seconds = time.perf_counter() - start
    attrs = {"offsets": json.dumps([list(o) for o in params.segment.offsets]), "source": str(raw_spec),
             "checkpoint": str(checkpoint), "augment": cfg.augment}
    if facts.get("agglomeration_threshold") is not None:
        attrs["agglomeration_threshold"] = float(facts["agglomeration_threshold"])
    write_volumes(out, outputs, attrs)
    return {"predict_seconds": seconds, "voxels": int(raw.size)}
