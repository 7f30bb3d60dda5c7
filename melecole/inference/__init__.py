"""Running a patch-sized model over whole volumes."""

from melecole.inference.sliding_window import blend_window, sliding_window_predict, tile_starts

__all__ = ["blend_window", "sliding_window_predict", "tile_starts"]
