"""A small name -> constructor registry, so checkpoints and configs name models by string."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

Constructor = TypeVar("Constructor", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Constructor], Constructor]:
    """Decorator that registers a model class or factory under ``name``.

    Args:
        name: the string configs and checkpoints use, e.g. ``"unet3d"``.

    Returns:
        A decorator that records the constructor and returns it unchanged.

    Raises:
        ValueError: if ``name`` is already taken by a different constructor.
    """

    def decorator(constructor: Constructor) -> Constructor:
        known = _MODELS.get(name)
        if known is not None and known is not constructor:
            raise ValueError(f"model name '{name}' is already registered to {known.__qualname__}")
        _MODELS[name] = constructor
        return constructor

    return decorator


def model_names() -> tuple[str, ...]:
    """The registered model names, sorted."""
    return tuple(sorted(_MODELS))


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Builds the model registered under ``name`` with keyword arguments.

    Args:
        name: a registered model name.
        **kwargs: the constructor's keyword arguments (e.g. a checkpoint's ``constructor_args``).

    Returns:
        The new module.

    Raises:
        ValueError: if ``name`` is unknown; the message lists the known names.
    """
    constructor = _MODELS.get(name)
    if constructor is None:
        known = ", ".join(model_names()) or "(none)"
        raise ValueError(f"unknown model '{name}'; known models: {known}")
    return constructor(**kwargs)
