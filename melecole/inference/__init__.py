"""Running a patch-sized model over volumes: the tile grid, blending, whole volumes and blocks.

The names below load their module on first use, so that importing a light part of the package
(``melecole.inference.encoding``, which segment and evaluate use) does not import torch.
"""

from importlib import import_module

_MODULES = {"TileGrid": "tiling", "blend_window": "blend", "sliding_window_predict": "sliding_window",
            "tile_starts": "tiling"}

__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        return getattr(import_module(f"melecole.inference.{_MODULES[name]}"), name)
    raise AttributeError(f"module 'melecole.inference' has no attribute '{name}'")
