"""Looking at the results: a local Neuroglancer viewer of raw, segmentation, ground truth and predictions.

Only :mod:`melecole.view.viewer` imports neuroglancer, and this package imports it on first use,
so ``import melecole.view`` works without it.
"""

from melecole.view.layers import Layer, LazyArray, ViewPlan, plan_view

__all__ = ["Layer", "LazyArray", "ViewPlan", "ViewSession", "open_view", "plan_view"]


def __getattr__(name: str):
    if name in ("ViewSession", "open_view"):
        from melecole.view import viewer

        return getattr(viewer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
