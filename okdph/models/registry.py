"""Name -> constructor registry for every architecture the trainer and the analyses build.

Both halves of the project rebuild networks only through this registry: a run directory names an
architecture and its keyword arguments, never an import path.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered."""


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that registers a model constructor under ``name``."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = factory
        return factory

    return decorate


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def factory(name: str) -> ModelFactory:
    """The constructor registered under ``name`` (to inspect its keyword arguments)."""
    if name not in _MODELS:
        raise UnknownModelError(
            f"unknown model {name!r}; available models: {', '.join(list_models())}"
        )
    return _MODELS[name]


def create(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments (e.g. ``num_classes=100``)."""
    build = factory(name)
    try:
        return build(**kwargs)
    except TypeError as err:
        raise ValueError(f"model {name!r} does not accept these arguments {kwargs}: {err}") from err
