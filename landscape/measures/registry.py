"""The registry of measures: the built-in ones, then those of installed packages.

A package adds a measure by declaring an entry point in the group ``landscape.measures`` that
names a :class:`~landscape.measures.base.Measure` subclass (or instance)::

    [project.entry-points."landscape.measures"]
    curvature_ratio = "mypkg.measures:CurvatureRatio"

Entry points are loaded once, on the first lookup; a broken one is one sentence naming it.
"""

from __future__ import annotations

import dataclasses
import importlib
from importlib.metadata import entry_points
from typing import Any

from landscape.core.errors import LandscapeError
from landscape.measures.base import Measure

ENTRY_POINT_GROUP = "landscape.measures"

#: Built-in measures (``module:class`` in ``landscape.measures``), in report and summary order.
BUILTIN: tuple[str, ...] = (
    "fit:Fit",
    "eigen:Eigen",
    "trace:Trace",
    "density:Density",
    "layers:Layers",
    "sharpness:Sharpness",
    "interp:Interpolation",
    "plane:PlaneSurface",
    "surface:RandomSurface",
    "trajectory:Trajectory",
    "relflat:RelativeFlatness",
    "adaptive:AdaptiveCurvature",
    "pacbayes:PacBayesFlatness",
    "simplex:Simplex",
)

_REGISTRY: dict[str, Measure] = {}
_LOADED = False


def register(measure: Measure | type[Measure]) -> Measure:
    """Add a measure (class or instance) to the registry; returns the instance.

    Raises:
        LandscapeError: a name taken twice, or a settings field that another measure declares
            with another default (fields of one name are one knob).
    """
    instance = measure() if isinstance(measure, type) else measure
    name = getattr(instance, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise LandscapeError(f"measure {instance!r} needs a name that is an identifier")
    if name in _REGISTRY and type(_REGISTRY[name]) is not type(instance):
        raise LandscapeError(f"two measures are named {name!r}")
    defaults = option_defaults(_REGISTRY.values())
    for f in dataclasses.fields(instance.settings):
        value = _default(f)
        if f.name in defaults and defaults[f.name] != value:
            raise LandscapeError(
                f"measure {name!r} declares setting {f.name!r} with default {value!r}, "
                f"but another measure's default is {defaults[f.name]!r}"
            )
    _REGISTRY[name] = instance
    return instance


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise LandscapeError(f"setting {f.name!r} has no default")


def option_defaults(measures: Any) -> dict[str, Any]:
    """``{setting: default}`` over the settings of ``measures``."""
    out: dict[str, Any] = {}
    for m in measures:
        for f in dataclasses.fields(m.settings):
            out.setdefault(f.name, _default(f))
    return out


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for spec in BUILTIN:
        module, _, cls = spec.partition(":")
        register(getattr(importlib.import_module(f"landscape.measures.{module}"), cls))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP}"
        try:
            obj = ep.load()
        except Exception as err:  # a third-party import can fail in any way
            raise LandscapeError(
                f"could not load {where}: {err.__class__.__name__}: {err}"
            ) from None
        if not (isinstance(obj, Measure) or (isinstance(obj, type) and issubclass(obj, Measure))):
            raise LandscapeError(f"{where} is not a landscape Measure")
        register(obj)


def reload() -> dict[str, Measure]:
    """Read the built-in measures and the entry points again (after installing a package
    into a running session, e.g. a notebook); returns the registry."""
    global _LOADED
    _REGISTRY.clear()
    _LOADED = False
    return measures()


def measures() -> dict[str, Measure]:
    """Every registered measure by name, built-in first, in report order."""
    _load()
    return dict(_REGISTRY)


def get(name: str) -> Measure:
    """The measure called ``name`` (``LandscapeError`` naming the choices when unknown)."""
    known = measures()
    if name not in known:
        raise LandscapeError(f"unknown analysis {name!r}; choose from {', '.join(known)}")
    return known[name]


def default_analyses() -> tuple[str, ...]:
    """The analyses run when ``--analyses`` is not given."""
    return tuple(n for n, m in measures().items() if m.default)
