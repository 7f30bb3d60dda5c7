"""Which layers ``melecole view`` shows, opened lazily and checked against each other.

Nothing here imports neuroglancer: this module opens the volumes, checks their shapes, dtypes
and voxel sizes, and wraps each one in a :class:`LazyArray` that reads only the region a
client asks for. :mod:`melecole.view.viewer` hands these arrays to neuroglancer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from melecole.errors import MelecoleError
from melecole.io import Volume, VolumeSpec, open_container, open_volume
from melecole.io.units import VoxelSize, voxel_size_from

# Datasets picked in a multi-dataset file when the address names none (data/test.h5 holds raw
# and labels, outputs/segmentation.h5 holds segmentation and its baselines).
PREFERRED_DATASETS = {"raw": "raw", "segmentation": "segmentation", "ground truth": "labels"}
# Prediction datasets shown, in this order: dataset name -> layer name.
PREDICTION_LAYERS = {"boundary": "boundary", "affinities": "affinities",
                     "predicted_affinities": "predicted affinities"}
# Meshes need the whole segmentation in memory (neuroglancer's mesher works on one array):
# 2**24 voxels is 128 MiB of uint64.
MESH_MAX_VOXELS = 2 ** 24
# Image dtypes neuroglancer displays as they are; others are converted chunk by chunk.
_IMAGE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32")


@dataclass(frozen=True)
class Layer:
    """One layer of the view.

    Attributes:
        name: the layer's name in the viewer (``raw``, ``segmentation``, ``ground truth``,
            ``boundary``, ``affinities``, ``predicted affinities``).
        kind: ``"image"``, ``"segmentation"`` or ``"affinities"`` (an image of 3 channels
            shown as RGB).
        array: the lazily read data, z, y, x (channels first for affinities).
        visible: shown when the viewer opens (the others are one click away).
    """

    name: str
    kind: str
    array: LazyArray
    visible: bool


@dataclass(frozen=True)
class ViewPlan:
    """Every layer, the voxel size they share and notes for the user."""

    layers: tuple[Layer, ...]
    voxel_size: VoxelSize | None
    shape: tuple[int, int, int]  # z, y, x
    notes: tuple[str, ...] = field(default=())

    def close(self) -> None:
        """Releases the file handles of every layer."""
        for layer in self.layers:
            layer.array.volume.close()


class LazyArray:
    """A volume as the array-like neuroglancer's ``LocalVolume`` reads: ``shape``, ``dtype``, ``[index]``.

    Indexing with slices reads just that region through :meth:`Volume.read`, converted to the
    display dtype; nothing is cached. Reads are serialised per volume (HDF5 handles are not
    safe across the server's reader threads).

    Args:
        volume: the opened volume, (Z, Y, X) or (C, Z, Y, X).
        dtype: the dtype served (signed labels become unsigned of the same width).
        channels: for a (C, Z, Y, X) volume, the channels served, in order; the first axis
            of this array then runs over them.
    """

    def __init__(self, volume: Volume, dtype, channels: Sequence[int] | None = None):
        self.volume = volume
        self.dtype = np.dtype(dtype)
        self.channels = tuple(channels) if channels is not None else None
        spatial = volume.shape[-3:]
        self.shape = spatial if self.channels is None else (len(self.channels), *spatial)
        self._lock = threading.Lock()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) != self.ndim or not all(isinstance(s, slice) and s.step in (None, 1) for s in index):
            raise IndexError(f"{self.volume.name}: expected {self.ndim} step-less slices, got {index!r}")
        bounds = [s.indices(size)[:2] for s, size in zip(index, self.shape)]
        region = [slice(start, max(start, stop)) for start, stop in bounds[-3:]]
        with self._lock:
            data = self.volume.read(region)
        if self.channels is not None:
            start, stop = bounds[0]
            data = data[list(self.channels[start:stop])]  # (c, z, y, x)
        return np.ascontiguousarray(data.astype(self.dtype, copy=False))

    def transpose(self) -> np.ndarray:
        """The whole volume in memory, x, y, z (what neuroglancer's mesh generator asks for).

        Raises:
            MelecoleError: more than :data:`MESH_MAX_VOXELS` voxels.
        """
        voxels = int(np.prod(self.shape))
        if voxels > MESH_MAX_VOXELS:
            raise MelecoleError(f"{self.volume.name}: {voxels} voxels is more than the {MESH_MAX_VOXELS} "
                                "meshes are made for")
        return self[tuple(slice(None) for _ in self.shape)].transpose()


def display_dtype(dtype: np.dtype, kind: str, name: str) -> np.dtype:
    """The dtype a layer of ``kind`` serves data of ``dtype`` in.

    Segmentations: unsigned integers as they are, signed ones as unsigned of the same width
    (label ids are not negative), booleans as uint8. Images: the types neuroglancer shows,
    other numbers as float32.

    Raises:
        MelecoleError: a segmentation that is not integers, or non-numeric data.
    """
    dtype = np.dtype(dtype)
    if kind == "segmentation":
        if dtype.kind == "b":
            return np.dtype(np.uint8)
        if dtype.kind in "iu":
            return np.dtype(f"uint{8 * dtype.itemsize}")
        raise MelecoleError(f"{name}: a segmentation holds integer labels, found dtype {dtype}")
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.name in _IMAGE_DTYPES:
        return dtype
    if dtype.kind in "iuf":
        return np.dtype(np.float32)
    raise MelecoleError(f"{name}: cannot show dtype {dtype} as an image")


def nearest_neighbour_channels(offsets: Sequence[Sequence[int]]) -> tuple[int, int, int] | None:
    """The channels of the z, y and x nearest-neighbour offsets (``(-1, 0, 0)`` or ``(1, 0, 0)`` ...).

    Returns:
        Three channel indices in z, y, x order, or None when one of them is missing.
    """
    found = []
    for axis in range(3):
        matches = [channel for channel, offset in enumerate(offsets)
                   if len(offset) == 3 and abs(int(offset[axis])) == 1 and sum(abs(int(d)) for d in offset) == 1]
        if not matches:
            return None
        found.append(matches[0])
    return (found[0], found[1], found[2])


def _stored_offsets(volume: Volume, container_attrs) -> list | None:
    """The affinity offsets the dataset or its container records (predict writes them as JSON text)."""
    for attrs in (volume.attrs, container_attrs):
        value = attrs.get("offsets")
        if value is None:
            continue
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return None
        try:
            return [[int(d) for d in offset] for offset in value]
        except (TypeError, ValueError):
            return None
    return None


def _open_role(text: str, role: str) -> Volume:
    """A 3-d volume from an address; a file holding several datasets falls back to the role's usual one."""
    spec = VolumeSpec.parse(str(text))
    if not spec.path.exists():
        raise MelecoleError(f"{role}: {spec.path} does not exist")
    preferred = PREFERRED_DATASETS.get(role)
    if spec.dataset is None and preferred is not None and spec.format in ("hdf5", "zarr"):
        try:
            with open_container(spec.path) as container:
                if preferred in container.names():
                    spec = VolumeSpec(spec.path, preferred)
        except MelecoleError:
            pass  # not a container (a bare zarr array, say): open_volume decides
    return open_volume(spec, ndim=3)


def _prediction_layers(path: Path) -> tuple[list[tuple[str, Volume, tuple[int, ...] | None]], list[str]]:
    """(layer name, volume, channels) for each prediction dataset of a container, and notes."""
    if not path.exists():
        raise MelecoleError(f"predictions: {path} does not exist")
    found, notes = [], []
    with open_container(path) as container:
        names = container.names()
        attrs = dict(container.attrs)
        present = [name for name in PREDICTION_LAYERS if name in names]
        if not present:
            raise MelecoleError(f"{path}: holds none of the prediction datasets "
                                f"{', '.join(PREDICTION_LAYERS)} (datasets: {', '.join(names) or 'none'})")
        for name in present:
            volume = container.dataset(name)
            if name == "boundary":
                if volume.ndim != 3:
                    raise MelecoleError(f"{volume.name}: a boundary map is (Z, Y, X), found shape {volume.shape}")
                found.append((PREDICTION_LAYERS[name], volume, None))
                continue
            if volume.ndim != 4 or volume.shape[0] < 3:
                raise MelecoleError(f"{volume.name}: affinities are (C, Z, Y, X) with at least 3 channels, "
                                    f"found shape {volume.shape}")
            offsets = _stored_offsets(volume, attrs)
            channels = nearest_neighbour_channels(offsets) if offsets else None
            if channels is None:
                channels = (0, 1, 2)
                notes.append(f"{volume.name}: no nearest-neighbour offsets recorded; showing channels 0, 1, 2 "
                             "as the z, y, x affinities")
            found.append((PREDICTION_LAYERS[name], volume, channels))
    return found, notes


def _shared_voxel_size(volumes: Sequence[Volume], override: Sequence[float] | None) -> VoxelSize | None:
    if override is not None:
        return voxel_size_from(list(override), "--voxel-size", "value")
    known = [(volume.name, volume.voxel_size) for volume in volumes if volume.voxel_size is not None]
    for name, size in known[1:]:
        if tuple(size) != tuple(known[0][1]):
            raise MelecoleError(f"voxel sizes differ: {known[0][0]} {tuple(known[0][1])} nm and {name} "
                                f"{tuple(size)} nm; pass --voxel-size Z Y X to choose one")
    return tuple(known[0][1]) if known else None


def plan_view(raw, seg, gt=None, pred=None, voxel_size: Sequence[float] | None = None) -> ViewPlan:
    """Opens every volume of a view lazily and checks they fit together.

    Args:
        raw: the EM volume's address (``vol.h5:raw``, ``vol.zarr/raw``, ``stack.tif``).
        seg: the segmentation's address.
        gt: the ground truth's address, or None.
        pred: a predictions container (``predict``'s ``.zarr`` or ``.h5``), or None; its
            ``boundary``, ``affinities`` and ``predicted_affinities`` datasets become layers.
        voxel_size: z, y, x in nm, instead of what the files say.

    Returns:
        The layers: raw and segmentation shown, the others hidden until switched on.

    Raises:
        MelecoleError: a missing file or dataset, a z, y, x shape that differs from raw's
            (the message names both datasets and shapes), a float segmentation, affinities
            with fewer than 3 channels, or voxel sizes that disagree.
    """
    opened: list[tuple[str, str, Volume, tuple[int, ...] | None, bool]] = []
    notes: list[str] = []
    try:
        for role, text, visible in (("raw", raw, True), ("segmentation", seg, True), ("ground truth", gt, False)):
            if text is not None:
                kind = "image" if role == "raw" else "segmentation"
                opened.append((role, kind, _open_role(text, role), None, visible))
        if pred is not None:
            found, notes = _prediction_layers(Path(pred))
            opened += [(name, "image" if channels is None else "affinities", volume, channels, False)
                       for name, volume, channels in found]
        reference = opened[0][2]
        for _, _, volume, _, _ in opened[1:]:
            if volume.shape[-3:] != reference.shape[-3:]:
                raise MelecoleError(f"{volume.name} {volume.shape} and {reference.name} {reference.shape} "
                                    "differ in z, y, x shape")
        size = _shared_voxel_size([volume for _, _, volume, _, _ in opened], voxel_size)
        layers = tuple(Layer(name, kind, LazyArray(volume, display_dtype(volume.dtype, kind, volume.name), channels),
                             visible)
                       for name, kind, volume, channels, visible in opened)
    except BaseException:
        for _, _, volume, _, _ in opened:
            volume.close()
        raise
    if size is None:
        notes.append("no voxel size in the files: showing unit-less voxels of 1 x 1 x 1 (pass --voxel-size Z Y X)")
    spatial = reference.shape[-3:]
    return ViewPlan(layers, size, (spatial[0], spatial[1], spatial[2]), tuple(notes))
