"""active: choose the blocks a proofreader should label next, and fold proofread blocks into training.

``select``: checkpoint + raw volume -> the volume's grid of blocks ranked by the model's
uncertainty (:mod:`melecole.active.uncertainty`, from the test-time-augmented views of
:mod:`melecole.active.views`), the top K written as ``block-NNN.h5`` (datasets ``raw``, the
voxels as stored, and ``uncertainty``, float32) beside ``ranking.json`` and ``ranking.csv``.
The proofreader adds a ``labels`` dataset to each block file.

``add``: proofread block files -> checked training volumes ``train-active-<name>-<i>.h5`` (raw,
labels uint64), by default in ``datasets/active/``, which ``melecole prepare`` copies into
``data/``: the prepare stage depends on ``datasets``, so ``dvc repro`` prepares and retrains.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from melecole.active.blocks import RankedBlock, block_grid, block_scores, rank_blocks, ranking_csv, ranking_json
from melecole.active.proofread import block_files, default_name, read_block, write_training_volumes
from melecole.active.uncertainty import SCORES, uncertainty_map
from melecole.active.views import view_moments
from melecole.config import Params
from melecole.data.normalize import normalize_raw
from melecole.errors import MelecoleError
from melecole.io import VolumeSpec, atomic_directory, atomic_output, open_container, open_volume, write_volumes

RANKING_JSON = "ranking.json"
RANKING_CSV = "ranking.csv"


def volume_uncertainty(params: Params, model: torch.nn.Module, loss: dict, raw: np.ndarray, score: str,
                       augment: str) -> np.ndarray:
    """float32 ``(Z, Y, X)`` uncertainty of a normalised volume (see :func:`uncertainty_map`).

    Args:
        params: ``predict`` (window, affinity metric) and ``segment.offsets``.
        model: the trained network.
        loss: the checkpoint's ``train.loss`` (margin and norm of its affinities).
        raw: normalised float32 (Z, Y, X).
        score: one of :data:`SCORES`.
        augment: the test-time views (``flips`` | ``permutations``; ``none`` only for entropies).

    Raises:
        MelecoleError: an unknown score, or ``tta-disagreement`` without test-time views.
    """
    if score not in SCORES:
        raise MelecoleError(f"unknown uncertainty score '{score}' ({', '.join(SCORES)})")
    if score == "tta-disagreement" and augment == "none":
        raise MelecoleError("score tta-disagreement compares test-time views: use --augment flips or permutations")
    cfg = params.predict
    try:
        boundary, affinities = view_moments(model, raw, cfg.patch, cfg.overlap, cfg.batch_size,
                                            params.segment.offsets, loss["delta_d"], loss["norm"], augment,
                                            cfg.affinity)
    except ValueError as error:
        raise MelecoleError(f"predict.patch / segment.offsets: {error}") from None
    return uncertainty_map(score, boundary, affinities)


def rank_volume(uncertainty: np.ndarray, block: Sequence[int]) -> list[RankedBlock]:
    """The grid of ``block``-shaped blocks of the map, most uncertain first."""
    blocks = block_grid(uncertainty.shape, block)
    return rank_blocks(block_scores(uncertainty, blocks), blocks)


def _check_no_proofreading(out: Path) -> None:
    # Re-selecting into a folder must not throw away labels a proofreader has written there.
    if not out.is_dir():
        return
    for path in sorted(out.glob("*.h5")):
        try:
            with open_container(path, mode="r") as container:
                labelled = "labels" in container.names()
        except MelecoleError:
            continue
        if labelled:
            raise MelecoleError(f"{path} holds proofread labels; fold them in with `melecole active add` and "
                                f"select into another folder (or move {out} away)")


def select(params: Params, checkpoint: str | Path, raw_spec: VolumeSpec, out: str | Path,
           block: Sequence[int] | None = None, top: int = 10, score: str = "tta-disagreement",
           augment: str = "flips") -> dict:
    """Ranks the blocks of a volume by the model's uncertainty and writes the top ``top``.

    Args:
        params: ``predict`` (window), ``segment.offsets``, ``train.device``, ``train.patch`` (the
            default block).
        checkpoint: a melecole checkpoint.
        raw_spec: the raw volume (held in memory with one view's predictions at a time).
        out: folder, replaced as a whole when complete: ``block-NNN.h5`` (rank NNN), ranking
            JSON and CSV (every block, its offset, shape, score and file).
        block: block shape (z, y, x); None: ``train.patch``, the smallest block training can use.
        top: blocks to write.
        score: one of :data:`SCORES`.
        augment: test-time views.

    Returns:
        Figures: seconds, volume shape, block, blocks ranked, files written, best and median score.
    """
    from melecole.checkpoint import load_model
    from melecole.inference.device import resolve_device

    start = time.perf_counter()
    out = Path(out)
    if top < 1:
        raise MelecoleError(f"--top must be at least 1, got {top}")
    block = tuple(int(b) for b in (block if block is not None else params.train.patch))
    if len(block) != 3 or min(block) < 1:
        raise MelecoleError(f"--block {block} must be three positive sizes (z, y, x)")
    _check_no_proofreading(out)
    model, trained_with, _ = load_model(checkpoint, resolve_device(params.train.device))
    with open_volume(raw_spec, ndim=3) as volume:
        stored = volume.read()
        voxel_size = volume.voxel_size
    if np.issubdtype(stored.dtype, np.floating) and not np.isfinite(stored).all():
        raise MelecoleError(f"{raw_spec} {stored.shape}: {int((~np.isfinite(stored)).sum())} NaN or infinite voxels; "
                            "replace them before selecting")
    raw = normalize_raw(stored, str(raw_spec))
    uncertainty = volume_uncertainty(params, model, trained_with["train"]["loss"], raw, score, augment)
    ranking = rank_volume(uncertainty, block)
    chosen = ranking[:top]
    files = {r.rank: f"block-{r.rank:03d}.h5" for r in chosen}
    facts = {"score": score, "augment": augment, "raw": str(raw_spec), "checkpoint": str(checkpoint),
             "volume": list(stored.shape), "block": list(ranking[0].block.shape), "candidates": len(ranking),
             "selected": len(chosen)}
    with atomic_directory(out) as tmp:
        tmp.mkdir(parents=True)
        for r in chosen:
            region = r.block.region
            write_volumes(tmp / files[r.rank], {"raw": stored[region], "uncertainty": uncertainty[region]},
                          {**r.as_row(), "score_name": score, "source": str(raw_spec), "checkpoint": str(checkpoint)},
                          voxel_size=voxel_size)
        with atomic_output(tmp / RANKING_JSON) as path:
            path.write_text(ranking_json(ranking, files, facts))
        with atomic_output(tmp / RANKING_CSV) as path:
            path.write_text(ranking_csv(ranking, files))
    scores = [r.score for r in ranking]
    return {"seconds": round(time.perf_counter() - start, 3), **facts, "out": str(out),
            "files": [str(out / files[r.rank]) for r in chosen], "best_score": scores[0],
            "median_score": float(np.median(scores))}


def add(sources: Sequence[str | Path], data: str | Path = "datasets/active", name: str | None = None,
        min_shape: Sequence[int] | None = None) -> list[Path]:
    """Checks proofread blocks and writes them as training volumes ``data/train-active-<name>-<i>.h5``.

    Args:
        sources: block files and folders of block files (datasets raw and labels).
        data: the folder of the training volumes (``datasets/active``: prepare copies them into
            ``data/``; a prepared folder: training finds them at once).
        name: part of the file names; None: the first source's folder name.
        min_shape: the training patch; smaller blocks are refused.

    Every block is read and checked before anything is written, and an existing volume is never
    replaced: either all blocks are added or none.

    Raises:
        MelecoleError: naming the file, dataset and shapes of a bad block.
    """
    files = block_files(sources)
    volumes = [read_block(path, min_shape) for path in files]
    return write_training_volumes(volumes, data, name if name is not None else default_name(sources),
                                  [{"proofread_from": str(path)} for path in files])
