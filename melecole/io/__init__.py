"""Volume input and output: HDF5, zarr / OME-Zarr and TIFF behind one Volume interface; atomic writes."""

from melecole.io.atomic import atomic_directory, atomic_output
from melecole.io.container import Container, create_container, default_chunks, open_container
from melecole.io.formats import detect_format
from melecole.io.spec import VolumeSpec
from melecole.io.volume import Volume, open_volume
from melecole.io.volumes import check_same_shape, read_volume, read_volumes, write_volumes

__all__ = [
    "Container", "Volume", "VolumeSpec", "atomic_directory", "atomic_output", "check_same_shape",
    "create_container", "default_chunks", "detect_format", "open_container", "open_volume",
    "read_volume", "read_volumes", "write_volumes",
]
