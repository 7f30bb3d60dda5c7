"""Volume input and output: HDF5 reading with checks, atomic writes."""

from melecole.io.atomic import atomic_output
from melecole.io.volumes import VolumeSpec, check_same_shape, read_volume, read_volumes, write_volumes

__all__ = ["VolumeSpec", "check_same_shape", "atomic_output", "read_volume", "read_volumes", "write_volumes"]
