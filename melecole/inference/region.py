"""One region of a volume through a trained model: boundary, affinities, optional embedding.

The region's prediction blends the tiles of the volume's global grid that touch it
(:mod:`melecole.inference.tiling`), so any partition of a volume into regions (blocks) gives the
whole-volume result voxel for voxel. Per tile:

- the boundary logits become probabilities;
- embedding affinities are computed from that tile's embedding alone (two tiles' embeddings need
  not share one space) and blended; a pair whose partner lies outside the tile gets no vote from
  it;
- the affinity head's logits become probabilities, remapped to the original channels under
  test-time augmentation (:func:`melecole.inference.volume.remap_affinities`).

Test-time augmentation runs each tile in every transformed frame, maps the outputs back and
averages them before blending; the embedding returned (on request) is the untransformed one's.
Pairs whose partner lies outside the volume get embedding affinity 0.

On the CPU the network runs every convolution through oneDNN and the per-tile work after it on
one thread (:mod:`melecole.inference.kernels`: ATen's own choices cost twice the time here).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from melecole.inference.blend import RegionBlender
from melecole.inference.kernels import OneDnnConvolutions, one_thread
from melecole.inference.tiling import Region, TileGrid, full_region, union_box
from melecole.inference.transforms import Transform, augmentations, backward, forward, remap_affinities
from melecole.segment.affinities import cosine_affinities, embedding_affinities

Reader = Callable[[Region], np.ndarray]  # region inside the volume -> normalised float32 (Z, Y, X)
_IDENTITY: Transform = ((0, 1, 2), ())
Offsets = Sequence[Sequence[int]]


def read_padded(read: Reader, shape: Sequence[int], box: Region) -> np.ndarray:
    """The voxels of ``box``, reflection-padded where the box passes the volume's end.

    A box only passes the end along axes where the volume is smaller than the patch; there the
    box starts at 0, so the whole axis is read and the padding equals that of the whole volume.
    """
    clipped = tuple(slice(b.start, min(b.stop, int(s))) for b, s in zip(box, shape))
    data = np.asarray(read(clipped), dtype=np.float32)
    pad = [(0, b.stop - c.stop) for b, c in zip(box, clipped)]
    return np.pad(data, pad, mode="reflect") if any(after for _, after in pad) else data


def volume_pairs(shape: Sequence[int], offsets: Offsets, region: Region) -> np.ndarray:
    """float32 ``(C, *region)``: 1 where the partner ``v + offsets[c]`` of a region voxel ``v`` lies
    inside the volume, else 0."""
    extent = [r.stop - r.start for r in region]
    mask = np.ones((len(offsets), *extent), dtype=np.float32)
    for channel, offset in enumerate(offsets):
        for axis, (r, size, step) in enumerate(zip(region, shape, offset)):
            coords = np.arange(r.start, r.stop) + int(step)
            outside = (coords < 0) | (coords >= int(size))
            if outside.any():
                index = [channel] + [slice(None)] * 3
                index[axis + 1] = outside
                mask[tuple(index)] = 0.0
    return mask


def model_device(model: torch.nn.Module) -> torch.device:
    """The device the model's parameters live on (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    """Sigmoid of a (B, C, Z, Y, X) batch of logits, float32 numpy on the CPU."""
    return torch.sigmoid(logits.float()).cpu().numpy()


def _add(total: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    """``total + values``, in place after the first (``values`` are this tile's own arrays)."""
    if total is None:
        return values
    total += values
    return total


class TilePredictor:
    """Runs the model on a batch of tiles in every test-time transform and averages the outputs.

    Args:
        model: the U-Net in eval mode; returns ``embedding``, ``boundary`` and maybe ``affinities``
            (the head's logits), each ``(B, C, Z, Y, X)``.
        patch: tile shape.
        offsets: the affinity offsets.
        delta_d, norm: margin and norm of the loss, for distance affinities.
        augment: ``none`` | ``flips`` | ``permutations``.
        metric: ``distance`` | ``cosine``.
        keep_embedding: also return the (untransformed) embedding of each tile.
    """

    def __init__(self, model: torch.nn.Module, patch: Sequence[int], offsets: Offsets, delta_d: float, norm: str,
                 augment: str = "none", metric: str = "distance", keep_embedding: bool = False):
        if metric not in ("distance", "cosine"):
            raise ValueError(f"unknown affinity metric '{metric}' (distance, cosine)")
        self.model = model
        self.offsets = [tuple(int(d) for d in o) for o in offsets]
        self.transforms: list[Transform] = augmentations(augment)
        self.keep_embedding = keep_embedding
        # Pairs whose partner lies inside the tile, per axis: (C, P_axis) each, the product is the tile's.
        self.tile_pairs = tuple(np.stack([((np.arange(p) + o[axis] >= 0) & (np.arange(p) + o[axis] < p))
                                          for o in self.offsets]).astype(np.float32)
                                for axis, p in enumerate(patch))
        self.head_votes_everywhere = len(self.transforms) == 1
        self.device = model_device(model)
        if metric == "cosine":
            self._affinities = lambda e: cosine_affinities(e, self.offsets)
        else:
            self._affinities = lambda e: embedding_affinities(e, self.offsets, delta_d=delta_d, norm=norm)

    def __call__(self, tiles: np.ndarray) -> list[dict[str, tuple[np.ndarray, np.ndarray | None]]]:
        """Outputs of ``tiles`` (B, Z, Y, X) for :class:`RegionBlender`, one dict per tile."""
        count = len(self.transforms)
        boundary: list[np.ndarray | None] = [None] * len(tiles)
        affinities: list[np.ndarray | None] = [None] * len(tiles)
        head: list[tuple[np.ndarray, np.ndarray | None] | None] = [None] * len(tiles)  # (values, votes)
        embeddings: list[np.ndarray | None] = [None] * len(tiles)
        for transform in self.transforms:
            batch = np.stack([forward(tile, transform) for tile in tiles])[:, None]  # (B, 1, Z', Y', X')
            with torch.inference_mode():
                with OneDnnConvolutions():
                    out = self.model(torch.from_numpy(batch).to(self.device))
                with one_thread(self.device):
                    logits = {key: _probabilities(out[key]) for key in ("boundary", "affinities") if key in out}
                    for b in range(len(tiles)):
                        embedding = backward(out["embedding"][b].float().cpu().numpy(), transform)  # (E, Z, Y, X)
                        if embeddings[b] is None and self.keep_embedding:
                            embeddings[b] = embedding
                        affinities[b] = _add(affinities[b],
                                             self._affinities(torch.from_numpy(embedding).to(self.device)))
                        boundary[b] = _add(boundary[b], backward(logits["boundary"][b], transform))
                        if "affinities" in logits:
                            probabilities = backward(logits["affinities"][b], transform)
                            if count == 1 and transform == _IDENTITY:
                                head[b] = (probabilities, None)  # one vote per channel everywhere: nothing to remap
                            else:
                                values, votes = remap_affinities(probabilities, self.offsets, transform)
                                head[b] = (values, votes) if head[b] is None else (head[b][0] + values,
                                                                                   head[b][1] + votes)
        results = []
        for b in range(len(tiles)):
            if count > 1:
                boundary[b] /= count
                affinities[b] /= count
            result = {"boundary": (boundary[b], None), "affinities": (affinities[b], self.tile_pairs)}
            if head[b] is not None and head[b][1] is None:
                result["predicted_affinities"] = (head[b][0], None)
            elif head[b] is not None:
                values, votes = head[b]
                # Without test-time transforms every channel has its vote everywhere.
                validity = None if self.head_votes_everywhere else (votes > 0).astype(np.float32)
                result["predicted_affinities"] = (np.divide(values, votes, out=np.zeros_like(values), where=votes > 0),
                                                  validity)
            if embeddings[b] is not None:
                result["embedding"] = (embeddings[b], None)
            results.append(result)
        return results


def predict_region(tile_predictor: TilePredictor, read: Reader, grid: TileGrid, region: Region | None = None,
                   batch_size: int = 1, on_tiles: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Predicts ``region`` (default: the whole volume) of the volume behind ``read``.

    Args:
        tile_predictor: runs the model on tiles (:class:`TilePredictor`).
        read: returns the normalised raw voxels of a region inside the volume.
        grid: the volume's tile grid.
        region: the voxels to predict; the tiles touching it are read and run.
        batch_size: tiles per model call.
        on_tiles: called with the number of tiles just finished (progress).

    Returns:
        float32 arrays over the region: boundary (Z, Y, X), affinities (C, Z, Y, X), and
        predicted_affinities (C, Z, Y, X) for a model with an affinity head, embedding
        (E, Z, Y, X) when the tile predictor keeps it.
    """
    region = region or full_region(grid.shape)
    starts = grid.starts(region)
    boxes = [grid.box(start) for start in starts]
    around = union_box(boxes)
    raw = read_padded(read, grid.shape, around)  # the union of the tiles, padded coordinates
    blender = RegionBlender(region, grid.patch)
    iterator = iter(starts)
    while batch := list(itertools.islice(iterator, batch_size)):
        tiles = np.stack([raw[tuple(slice(s - a.start, s - a.start + p) for s, a, p in zip(start, around, grid.patch))]
                          for start in batch])
        for start, outputs in zip(batch, tile_predictor(tiles)):
            blender.add(start, outputs)
        if on_tiles is not None:
            on_tiles(len(batch))
    result = blender.result()
    result["boundary"] = result["boundary"][0]
    # Channel by channel: a mask of every channel at once is as large as the affinities.
    for channel, offset in enumerate(tile_predictor.offsets):
        result["affinities"][channel] *= volume_pairs(grid.shape, [offset], region)[0]
    return result
