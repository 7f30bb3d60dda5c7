"""Candidate blocks of a volume and their ranking by uncertainty, pure numpy.

The candidates are the whole blocks of a grid from the volume's origin: every block has the
requested shape (clipped to the volume along an axis where the volume is smaller), blocks do not
overlap, and the voxels past the last whole block of an axis are no candidate. Equal shapes make
the proofreading effort per block equal and the scores comparable.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class Block:
    """One candidate block: its corner and extent, z, y, x, in voxels of the volume."""

    offset: Triple
    shape: Triple

    @property
    def region(self) -> tuple[slice, slice, slice]:
        """The block as slices into the volume."""
        return tuple(slice(o, o + s) for o, s in zip(self.offset, self.shape))


@dataclass(frozen=True)
class RankedBlock:
    """A block with its score (the mean uncertainty of its voxels) and rank (1 = most uncertain)."""

    rank: int
    block: Block
    score: float

    def as_row(self) -> dict:
        """A flat JSON-ready dict: rank, offset, shape, score."""
        return {"rank": self.rank, "offset": list(self.block.offset), "shape": list(self.block.shape),
                "score": self.score}


def block_grid(shape: Sequence[int], block: Sequence[int]) -> list[Block]:
    """The whole blocks of ``block`` voxels tiling a ``shape`` volume from its origin, in C order.

    Raises:
        ValueError: shapes that are not three positive sizes.
    """
    shape, block = tuple(int(s) for s in shape), tuple(int(b) for b in block)
    if len(shape) != 3 or len(block) != 3 or min(shape) < 1 or min(block) < 1:
        raise ValueError(f"volume {shape} and block {block} must be three positive sizes (z, y, x)")
    block = tuple(min(b, s) for b, s in zip(block, shape))
    starts = [range(0, s - b + 1, b) for s, b in zip(shape, block)]
    return [Block(tuple(int(v) for v in corner), block) for corner in itertools.product(*starts)]


def block_scores(uncertainty: np.ndarray, blocks: Sequence[Block]) -> np.ndarray:
    """float64 ``(N,)``: the mean of the ``(Z, Y, X)`` uncertainty map over each block."""
    uncertainty = np.asarray(uncertainty)
    if uncertainty.ndim != 3:
        raise ValueError(f"uncertainty must be (Z, Y, X), got shape {uncertainty.shape}")
    return np.array([float(np.mean(uncertainty[b.region], dtype=np.float64)) for b in blocks], dtype=np.float64)


def rank_blocks(scores: Sequence[float], blocks: Sequence[Block]) -> list[RankedBlock]:
    """Blocks from the highest score to the lowest; equal scores keep the grid's (C) order."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(blocks):
        raise ValueError(f"{len(scores)} scores for {len(blocks)} blocks")
    order = np.argsort(-scores, kind="stable")
    return [RankedBlock(rank + 1, blocks[i], float(scores[i])) for rank, i in enumerate(order)]


def ranking_json(ranking: Sequence[RankedBlock], files: dict[int, str], facts: dict) -> str:
    """The ranking as JSON text: ``facts`` (score, volume, ...) and one row per block, the written
    blocks with their ``file``."""
    rows = [{**r.as_row(), "file": files.get(r.rank)} for r in ranking]
    return json.dumps({**facts, "blocks": rows}, indent=2) + "\n"


def ranking_csv(ranking: Sequence[RankedBlock], files: dict[int, str]) -> str:
    """The ranking as CSV text: rank, z, y, x, size_z, size_y, size_x, score, file."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "z", "y", "x", "size_z", "size_y", "size_x", "score", "file"])
    for r in ranking:
        writer.writerow([r.rank, *r.block.offset, *r.block.shape, repr(r.score), files.get(r.rank, "")])
    return out.getvalue()
