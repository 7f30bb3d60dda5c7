"""The segment stage blockwise: fragments per block, one graph of fragments across blocks,
agglomeration on it, and relabelling block by block.

1. ``fragments``: each block's watershed fragments, computed with ``context`` voxels around the
   block (:func:`melecole.segment.graph.block_fragments`), ids made unique by adding the block's
   index shifted by 40 bits.
2. ``graph``: each block's region graph, voxel pairs inside it and across its lower faces
   (reading a one-voxel halo of the neighbours' fragments), saved as one small file per block.
3. the driver merges the graphs, agglomerates by mean affinity up to the threshold and merges
   small segments by contact: the whole volume's maths on the fragment graph, so a neuron that
   crosses blocks gets one id.
4. ``relabel``: each block's fragments through the fragment -> segment table.

Per block, the functions are those of :func:`melecole.segment.graph.segment_via_graph`, which
runs the same chain in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from melecole.blockwise.geometry import block_index, grow, inner
from melecole.inference.encoding import decode
from melecole.segment.agglomerate import boundary_affinities
from melecole.segment.graph import FIELDS, Graph, block_fragments, fragment_graph, normalised_graph

ID_BITS = 40
Region = tuple[slice, slice, slice]


@dataclass
class NearestAffinities:
    """Reads nearest-neighbour affinities (3, Z, Y, X) of a region from a predictions container:
    the affinity head's, the embedding's, or 1 - max of the boundary map of the pair."""

    predictions: str
    source: str
    _volume: object = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_volume": None}

    def _open(self):
        if self._volume is None:
            from melecole.io import open_container

            name = {"affinities": "predicted_affinities", "embedding": "affinities", "boundary": "boundary"}[self.source]
            self._volume = open_container(self.predictions).dataset(name)
        return self._volume

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._open().shape[-3:])

    def __call__(self, region: Region) -> np.ndarray:
        stored = self._open().read(region)
        if self.source == "boundary":
            return boundary_affinities(decode(stored))
        # Only the three nearest-neighbour channels are decoded (float32): 12 bytes per voxel,
        # not 4 per stored channel.
        return decode(np.ascontiguousarray(stored[:3]))


@dataclass
class FragmentBlocks:
    """Task 1: a block's fragments, with global ids, into ``fragments`` of the work store."""

    affinities: NearestAffinities
    store: str
    block: tuple[int, int, int]
    context: int

    def __call__(self, region: Region) -> None:
        from melecole.io import open_container

        shape = self.affinities.shape
        read = grow(region, self.context, self.context, shape)
        local = block_fragments(self.affinities(read), inner(region, read))
        offset = np.uint64(block_index(region, self.block, shape) << ID_BITS)
        ids = np.where(local == 0, np.uint64(0), local + offset)
        open_container(self.store, mode="a").dataset("fragments").write(tuple(r.start for r in region), ids)


@dataclass
class GraphBlocks:
    """Task 2: a block's region graph (inside it and across its lower faces) as ``graphs/N.npz``."""

    affinities: NearestAffinities
    store: str
    folder: str
    block: tuple[int, int, int]

    def __call__(self, region: Region) -> None:
        from melecole.io import open_container

        shape = self.affinities.shape
        read = grow(region, 1, 0, shape)
        fragments = open_container(self.store).dataset("fragments").read(read)
        graph = fragment_graph(fragments, self.affinities(read), inner(region, read))
        path = Path(self.folder) / f"{block_index(region, self.block, shape)}.npz"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, **{name: getattr(graph, name) for name in FIELDS})
        os.replace(tmp, path)


def load_graph(folder: str | Path) -> Graph:
    """The merged graph of every block's file saved by :class:`GraphBlocks`.

    Read one field at a time across the files and merged (:func:`normalised_graph`), so the
    driver never holds the blocks' graphs beside their concatenation.
    """
    paths = sorted(Path(folder).glob("*.npz"))
    fields = []
    for name, dtype in FIELDS.items():
        parts = [np.zeros(0, dtype)]
        for path in paths:
            with np.load(path) as data:
                parts.append(data[name])
        fields.append(np.concatenate(parts))
        del parts
    return normalised_graph(*fields)


@dataclass
class RelabelBlocks:
    """Task 4: a block's fragments through the table ``ids -> labels`` into ``segmentation``."""

    store: str
    table: str
    out: str
    _lookup: tuple | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lookup": None}

    def __call__(self, region: Region) -> None:
        from melecole.io import open_container

        if self._lookup is None:
            with np.load(self.table) as data:
                self._lookup = (data["ids"], data["labels"])
        ids, labels = self._lookup
        fragments = open_container(self.store).dataset("fragments").read(region)
        segmentation = np.zeros(fragments.shape, dtype=np.uint64)
        foreground = fragments != 0
        segmentation[foreground] = labels[np.searchsorted(ids, fragments[foreground])]
        open_container(self.out, mode="a").dataset("segmentation").write(tuple(r.start for r in region), segmentation)


def fragment_table(graph: Graph, threshold: float, min_size: int, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The final segment of every fragment of ``graph``: agglomeration up to ``threshold``, then
    segments under ``min_size`` voxels merged into the neighbour of most contact.

    With ``overwrite`` the graph's ``total`` is used as the merge's work array (the graph is
    left invalid): the driver, which loads the graph only for this, needs no copy of it. The
    graph's other arrays are freed once read when the caller holds no reference.

    Returns:
        ``(ids, labels)``: sorted uint64 fragment ids and their consecutive labels 1..n.
    """
    from melecole.segment.graph import agglomerate_positions, node_positions
    from melecole.segment.postprocess import merge_small_on_graph

    ids, sizes, u, v = node_positions(graph)
    total, count = (graph.total if overwrite else graph.total.copy()), graph.count.astype(np.float64)
    del graph  # pairs' ids and int counts: 24 bytes per pair freed before the merge
    segments, between = agglomerate_positions(ids, u, v, total, count, sizes, threshold)
    del u, v, total, count
    final = merge_small_on_graph(between.lo, between.hi, between.count, between.count, between.ids,
                                 between.sizes, min_size)
    merged = final[np.searchsorted(between.ids, segments)]  # (N,) per fragment; between.ids is sorted
    _, consecutive = np.unique(merged, return_inverse=True)
    return ids, (consecutive + 1).astype(np.uint64)


def segment_in_blocks(predictions: str | Path, out: str | Path, source: str, threshold: float, min_size: int,
                      block: tuple[int, int, int], context: int, chunks: tuple[int, int, int], scheduling,
                      job: dict, attrs: dict) -> dict:
    """Runs the four steps; ``out`` gets dataset ``segmentation`` (uint64).

    Returns:
        Block counts per task, the number of fragments and of segments, and whether an
        interrupted run was continued.
    """
    from melecole.blockwise.partial import PartialOutput
    from melecole.blockwise.run import BlockTask, run_task
    from melecole.io import create_container, open_container

    affinities = NearestAffinities(str(Path(predictions).resolve()), source)
    shape = affinities.shape
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape))
    voxel_size = open_container(predictions).dataset("boundary").voxel_size
    partial = PartialOutput(out, job)
    work = partial.workdir

    def create(path: Path) -> None:
        container = create_container(path)
        container.create_dataset("segmentation", shape, np.uint64, chunks=chunks, voxel_size=voxel_size)
        container.set_attrs(attrs)
        store = create_container(work / "fragments.zarr")
        store.create_dataset("fragments", shape, np.uint64, chunks=chunks)
        (work / "graphs").mkdir()

    resumed = partial.prepare(create)
    store, graphs = str((work / "fragments.zarr").resolve()), work / "graphs"
    counts = {"fragments": run_task(BlockTask("fragments", shape, block, FragmentBlocks(affinities, store, block, context)),
                                    work, scheduling)}
    counts["graph"] = run_task(BlockTask("graph", shape, block, GraphBlocks(affinities, store, str(graphs.resolve()), block)),
                               work, scheduling)
    ids, labels = fragment_table(load_graph(graphs), threshold, min_size, overwrite=True)
    table = work / "table.npz"
    np.savez(table, ids=ids, labels=labels)
    counts["relabel"] = run_task(BlockTask("relabel", shape, block,
                                           RelabelBlocks(store, str(table.resolve()), str(partial.data.resolve()))),
                                 work, scheduling)
    partial.finish()
    return {"blocks": counts, "fragments": int(len(ids)), "segments": int(labels.max(initial=0)), "resumed": resumed}
