"""Zarr volumes and containers (zarr v3 API; reads zarr formats 2 and 3, writes format 3).

Every chunk is its own file in a local store, written to a temporary name and renamed, so
processes writing disjoint whole chunks of one array never interfere. Attributes and
metadata are not safe to change from several processes at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle
from zarr.errors import BaseZarrError

from melecole.errors import MelecoleError
from melecole.io.attributes import plain_attrs
from melecole.io.container import Container
from melecole.io.ome import first_level, level_voxel_size
from melecole.io.spec import DEFAULT_DATASET, VolumeSpec
from melecole.io.units import VoxelSize, attribute_voxel_size
from melecole.io.volume import Volume

COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle)


def _open_node(store: Path, mode: str = "r"):
    try:
        return zarr.open(store=str(store), mode=mode)
    except (OSError, ValueError, BaseZarrError) as error:
        raise MelecoleError(f"{store}: not a readable zarr store ({error})") from None


def array_names(group: zarr.Group) -> list[str]:
    """Every array path below ``group``, sorted (``group/raw``)."""
    return sorted(path for path, node in group.members(max_depth=None) if isinstance(node, zarr.Array))


def default_array(group: zarr.Group, store: Path) -> str:
    """An OME-Zarr image's first level, else the store's only array, else the one named ``stack``."""
    level = first_level(group.attrs)
    if level is not None:
        return level
    names = array_names(group)
    if len(names) == 1:
        return names[0]
    if DEFAULT_DATASET in names:
        return DEFAULT_DATASET
    raise MelecoleError(f"{store}: holds datasets {', '.join(names) or 'none'}; name one as {store}/DATASET")


def zarr_voxel_size(store: Path, path: str, array: zarr.Array, name: str) -> VoxelSize | None:
    """The array's ``voxel_size`` (or ``resolution``) attribute, else the OME-Zarr scale of the
    nearest enclosing group whose multiscales list this array."""
    found = attribute_voxel_size(array.attrs, name)
    parts = path.split("/") if path else []
    for cut in range(len(parts) - 1, -1, -1):
        if found is not None:
            break
        try:
            group = zarr.open_group(store=str(store), path="/".join(parts[:cut]), mode="r")
        except (OSError, ValueError, BaseZarrError):
            continue  # a v2 store may lack the metadata of intermediate groups
        found = level_voxel_size(group.attrs, "/".join(parts[cut:]), name)
    return found


class ZarrVolume(Volume):
    """One zarr array, ``path`` inside ``store`` (``""`` when the store is the array)."""

    _transient = ("_array",)

    def __init__(self, store: Path, path: str, mode: str, array: zarr.Array | None = None):
        self.store, self.path, self.mode = Path(store), path, mode
        self._array = array
        array = self._handle()
        name = f"{store}/{path}" if path else str(store)
        super().__init__(name=name, shape=array.shape, dtype=array.dtype, chunks=array.shards or array.chunks,
                         voxel_size=zarr_voxel_size(self.store, path, array, name),
                         attrs=plain_attrs(array.attrs), writable=mode != "r")

    def _handle(self) -> zarr.Array:
        if self._array is None:
            try:
                self._array = zarr.open_array(store=str(self.store), path=self.path, mode=self.mode)
            except (OSError, ValueError, BaseZarrError) as error:
                raise MelecoleError(f"{self.store}: cannot open array '{self.path}' ({error})") from None
        return self._array

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self._handle()[index])
        except (OSError, ValueError, RuntimeError) as error:
            # numcodecs raises RuntimeError for a corrupt chunk ("error during blosc decompression").
            where = ", ".join(f"{s.start}:{s.stop}" for s in index)
            raise MelecoleError(f"{self.name}: cannot read the data at [{where}] ({error})") from None

    def _write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        self._handle()[index] = data

    def close(self) -> None:
        self._array = None


def open_zarr(spec: VolumeSpec, mode: str) -> ZarrVolume:
    """The array ``spec`` names (or the store's default one) as a volume."""
    root = _open_node(spec.path)
    if isinstance(root, zarr.Array):
        if spec.dataset:
            raise MelecoleError(f"{spec.path}: is a single array; it holds no dataset '{spec.dataset}'")
        return ZarrVolume(spec.path, "", mode)
    path = (spec.dataset or "").strip("/") or default_array(root, spec.path)
    node = root.get(path)
    if node is None:
        found = ", ".join(array_names(root)) or "none"
        raise MelecoleError(f"{spec.path}: no dataset '{path}' (datasets: {found})")
    if isinstance(node, zarr.Group):
        level = first_level(node.attrs)  # an OME-Zarr image inside the store: its first level
        if level is None:
            raise MelecoleError(f"{spec.path}/{path}: is a group, not a dataset")
        path = f"{path}/{level}"
    return ZarrVolume(spec.path, path, mode)


def _dimension_names(ndim: int) -> tuple[str | None, ...]:
    lead = ("c",) if ndim == 4 else (None,) * (ndim - 3)
    return lead + ("z", "y", "x")


class ZarrContainer(Container):
    """A zarr v3 store of arrays; Blosc zstd (level 3, byte shuffle) by default."""

    def __init__(self, path: Path, mode: str, group: zarr.Group):
        super().__init__(path, "zarr", mode)
        self._group = group

    @classmethod
    def create(cls, path: Path) -> ZarrContainer:
        return cls(path, "a", zarr.open_group(store=str(path), mode="w-", zarr_format=3))

    @classmethod
    def open(cls, path: Path, mode: str) -> ZarrContainer:
        root = _open_node(path, "r" if mode == "r" else "r+")
        if isinstance(root, zarr.Array):
            raise MelecoleError(f"{path}: is a single zarr array, not a group of datasets")
        return cls(path, mode, root)

    def names(self) -> list[str]:
        return array_names(self._group)

    def _volume_mode(self) -> str:
        return "r" if self.mode == "r" else "r+"

    def _dataset(self, name: str) -> ZarrVolume:
        return ZarrVolume(self.path, name, self._volume_mode(), array=self._group[name])

    def _create(self, name, shape, dtype, chunks, attrs, compression, fill_value) -> ZarrVolume:
        parent, _, _ = name.rpartition("/")
        if parent:
            self._group.require_group(parent)
        array = self._group.create_array(
            name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill_value,
            compressors=COMPRESSOR if compression else None, attributes=attrs,
            dimension_names=_dimension_names(len(shape)))
        return ZarrVolume(self.path, name, self._volume_mode(), array=array)

    def _read_attrs(self) -> dict:
        return plain_attrs(self._group.attrs)

    def _write_attrs(self, values: dict) -> None:
        self._group.attrs.update(values)
