"""Running a patch-sized model over volumes: the tile grid, blending, whole volumes and blocks."""

from melecole.inference.blend import blend_window
from melecole.inference.sliding_window import sliding_window_predict
from melecole.inference.tiling import TileGrid, tile_starts

__all__ = ["TileGrid", "blend_window", "sliding_window_predict", "tile_starts"]
