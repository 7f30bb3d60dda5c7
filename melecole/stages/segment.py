"""segment: predictions (affinities, boundary) -> Mutex Watershed -> clean-up -> segmentation (HDF5)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py

from melecole.config import SegmentConfig
from melecole.errors import MelecoleError
from melecole.io import VolumeSpec, read_volume, write_volumes
from melecole.segment.pipeline import segment_affinities


def _stored_offsets(path: Path) -> list[tuple[int, int, int]] | None:
    with h5py.File(path, "r") as handle:
        text = handle.attrs.get("offsets")
    return [tuple(o) for o in json.loads(text)] if text is not None else None


def segment(config: SegmentConfig, predictions: str | Path, out: str | Path, seed: int = 0) -> dict:
    """Segments the ``affinities`` of a predictions file; writes dataset ``segmentation``.

    The offsets stored with the affinities win over ``config.offsets``: they describe the
    channels that were actually computed.
    """
    predictions = Path(predictions)
    affinities = read_volume(VolumeSpec(predictions, "affinities"), ndim=4)
    offsets = _stored_offsets(predictions) or list(config.offsets)
    if len(offsets) != affinities.shape[0]:
        raise MelecoleError(f"{predictions}:affinities {affinities.shape} has {affinities.shape[0]} channels "
                            f"but {len(offsets)} offsets are configured")
    boundary = None
    if config.foreground_threshold < 1.0:
        boundary = read_volume(VolumeSpec(predictions, "boundary"))
    start = time.perf_counter()
    segmentation = segment_affinities(affinities, offsets, config.attractive, config.strides,
                                      config.randomize_strides, config.min_size, boundary,
                                      config.foreground_threshold, seed)
    seconds = time.perf_counter() - start
    write_volumes(out, {"segmentation": segmentation}, {"source": str(predictions)})
    return {"segment_seconds": seconds, "segments": int(segmentation.max())}
