"""predict: checkpoint + raw volume -> boundary, affinities (uint8) and optionally the embedding.

The volume is never held in memory: its intensity statistics are streamed first (refusing NaN
or infinite voxels before any work), then it is predicted block by block, each block blending
the tiles of the volume's global grid that touch it (the result does not depend on the block
shape), and written as soon as it is done. Blocks run in this process, in local worker
processes, or in workers started on other machines (daisy); a killed run resumes with the blocks
it had not finished.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

from melecole.blockwise.geometry import aligned_block
from melecole.blockwise.partial import PartialOutput, file_digest
from melecole.blockwise.predict import PredictBlocks
from melecole.blockwise.run import BlockTask, Scheduling, run_task
from melecole.checkpoint import load_model
from melecole.config import Params
from melecole.data.normalize import check_normalisable, intensity_statistics
from melecole.errors import MelecoleError
from melecole.inference.encoding import STORED_DTYPES, stored_bytes_per_voxel
from melecole.inference.tiling import TileGrid, cheapest_block
from melecole.inference.volume import check_patch
from melecole.io import VolumeSpec, create_container, open_volume
from melecole.inference.device import resolve_device

# Working bytes per voxel of a block: per output channel a float32 accumulator (divided in
# place) and its uint8 or float16 stored copy; per voxel the raw tiles around the block (float64
# while normalised, then float32, with the tiles' margin).
_WORKING_BYTES_PER_CHANNEL = 6
_RAW_BYTES = 24


def _channels(model, offsets: list, embedding: bool) -> dict[str, int]:
    channels = {"boundary": 1, "affinities": len(offsets)}
    if getattr(model, "affinity_head", None) is not None:
        channels["predicted_affinities"] = len(offsets)
    if embedding:
        channels["embedding"] = int(model.constructor_args["embedding_dim"])
    return channels


def _check_raw(spec: VolumeSpec):
    raw = open_volume(spec, ndim=3)
    stats = intensity_statistics(raw.read, raw.shape)
    if stats.nonfinite:
        share = 100.0 * stats.nonfinite / math.prod(raw.shape)
        raise MelecoleError(f"{spec} {tuple(raw.shape)}: {stats.nonfinite} NaN or infinite voxels ({share:.3g} %), "
                            f"the first at (z, y, x) = {stats.first_nonfinite}; replace them before predicting")
    check_normalisable(stats, str(spec), raw.shape)
    return raw, stats


def predict(params: Params, checkpoint: str | Path, raw_spec: VolumeSpec, out: str | Path,
            scheduling: Scheduling | None = None, block: tuple[int, int, int] | None = None,
            embedding: bool | None = None, voxel_size: tuple[float, float, float] | None = None,
            blockwise: bool = False) -> dict:
    """Writes ``boundary``, ``affinities`` (and ``predicted_affinities``, ``embedding``) to ``out``.

    Args:
        params: the pipeline parameters (``predict``, ``segment.offsets``, ``train.device``).
        checkpoint: a melecole checkpoint or ``zoo:<name>``; the affinity margin and norm come from its loss.
        raw_spec: the raw volume (HDF5, zarr or TIFF).
        out: ``.zarr`` (any run) or ``.h5`` (one process only).
        scheduling: workers, host, launcher (default: this process).
        block: block shape, a multiple of ``predict.chunks``; None chooses the largest that fits
            ``predict.memory_gb``.
        embedding: also store the embedding (float16); None follows ``predict.embedding``.
        voxel_size: (z, y, x) written with the outputs; None keeps the raw volume's.
        blockwise: the command line's ``--blockwise`` (requires a zarr output).

    Returns:
        Figures: seconds, voxels, voxels per second, blocks run and blocks found done.
    """
    from melecole.zoo import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)
    cfg = params.predict
    scheduling = scheduling or Scheduling()
    out = Path(out)
    parallel = scheduling.workers > 1 or bool(scheduling.launcher)
    if (blockwise or parallel) and out.suffix != ".zarr":
        raise MelecoleError(f"{out}: a blockwise or multi-process prediction writes a zarr store (several processes "
                            "write at once); name the output *.zarr")
    start = time.perf_counter()
    model, trained_with, facts = load_model(checkpoint, resolve_device(params.train.device))
    try:
        check_patch(model, cfg.patch, cfg.augment)
    except ValueError as error:
        raise MelecoleError(f"predict.patch: {error}") from None
    raw, stats = _check_raw(raw_spec)
    shape = tuple(raw.shape)
    offsets = [tuple(o) for o in params.segment.offsets]
    keep_embedding = cfg.embedding if embedding is None else embedding
    channels = _channels(model, offsets, keep_embedding)
    chunks = tuple(min(c, s) for c, s in zip(cfg.chunks, shape))
    if block is None and cfg.block is not None:
        block = tuple(cfg.block)
    if block is not None:
        block = aligned_block(block, chunks, "predict block")
    else:
        per_voxel = _WORKING_BYTES_PER_CHANNEL * sum(channels.values()) + _RAW_BYTES
        grid = TileGrid.of(shape, cfg.patch, cfg.overlap)
        block = cheapest_block(grid, chunks, per_voxel, cfg.memory_gb * 2**30)
    voxel_size = tuple(voxel_size) if voxel_size is not None else raw.voxel_size
    attrs = {"offsets": json.dumps([list(o) for o in offsets]), "source": str(raw_spec),
             "checkpoint": str(checkpoint), "augment": cfg.augment, "affinity": cfg.affinity,
             "encoding": json.dumps({name: STORED_DTYPES[name] for name in channels}),
             "normalisation": json.dumps({"mean": stats.mean, "std": stats.std})}
    if facts.get("agglomeration_threshold") is not None:
        attrs["agglomeration_threshold"] = float(facts["agglomeration_threshold"])
    if facts.get("calibration") is not None:
        attrs["calibration"] = json.dumps(facts["calibration"])
    job = {"stage": "predict", "checkpoint": file_digest(checkpoint), "raw": str(raw_spec), "shape": shape,
           "predict": cfg.model_dump(mode="json"), "offsets": offsets, "block": block, "chunks": chunks,
           "datasets": sorted(channels), "voxel_size": voxel_size, "attrs": attrs}
    partial = PartialOutput(out, job)

    def create(path: Path) -> None:
        container = create_container(path)
        for name, count in channels.items():
            leading = () if name == "boundary" else (count,)
            container.create_dataset(name, leading + shape, STORED_DTYPES[name], chunks=leading + chunks,
                                     voxel_size=voxel_size)
        container.set_attrs({**attrs, **({"voxel_size": list(voxel_size)} if voxel_size is not None else {})})
        container.close()

    resumed = partial.prepare(create)
    workers = max(1, scheduling.workers)
    threads = max(1, (os.cpu_count() or 1) // workers) if parallel else 0
    function = PredictBlocks(checkpoint=str(Path(checkpoint).resolve()), raw=str(_absolute(raw_spec)),
                             out=str(partial.data.resolve()), stats=stats, patch=tuple(cfg.patch),
                             overlap=tuple(cfg.overlap), batch_size=cfg.batch_size, augment=cfg.augment,
                             metric=cfg.affinity, offsets=offsets, datasets=list(channels),
                             device=params.train.device, threads=threads)
    raw.close()
    del model
    try:
        counts = run_task(BlockTask("predict", shape, block, function), partial.workdir, scheduling)
    finally:
        function.close()
    partial.finish()
    seconds = time.perf_counter() - start
    voxels = math.prod(shape)
    return {"predict_seconds": round(seconds, 3), "voxels": voxels, "voxels_per_second": round(voxels / seconds, 1),
            "block": list(block), "blocks": counts["blocks"], "blocks_done_before": counts["done_before"],
            "resumed": resumed, "bytes_per_voxel": stored_bytes_per_voxel(channels),
            "stats": {k: v for k, v in asdict(stats).items() if k in ("mean", "std")}}


def _absolute(spec: VolumeSpec) -> VolumeSpec:
    return VolumeSpec(Path(spec.path).resolve(), spec.dataset)
