"""Code okdph does not ship: entry-point groups and import paths.

Installed distributions add models, datasets, training methods and the curvature tracker through
four entry-point groups, each read by one :class:`EntryPointGroup`:

============== ================================================= ==============================
group          an entry point's object                           read by
============== ================================================= ==============================
okdph.models   a model factory (``**kwargs -> nn.Module``)      :mod:`okdph.models.registry`
okdph.datasets a dataset loader (``**kwargs -> TensorDataset``)  :mod:`okdph.data`
okdph.methods  a :class:`okdph.methods.Method` subclass          :mod:`okdph.methods.base`
okdph.trackers the curvature tracker's factory                   :mod:`okdph.tracking`
============== ================================================= ==============================

A distribution declares them in its ``pyproject.toml``::

    [project.entry-points."okdph.models"]
    my_net = "my_package.models:build_net"

Groups are read on the first lookup or listing (and again when ``sys.path`` changes); an entry
point's object is imported only when its name is looked up. Built-in names come first: a plug-in
of the same name is listed but never used. A broken entry point (its module does not import, its
object is missing or of the wrong kind, two distributions claim its name) is one sentence naming
the distribution and the entry point, raised as the group's error type.

Models and datasets may also be named by an import path, ``package.module:callable``
(:func:`is_import_path`, :func:`import_object`), without any installation.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from okdph.config import ConfigError


class PluginError(ConfigError):
    """A plug-in that cannot be used (the default error type of an :class:`EntryPointGroup`)."""


@dataclass(frozen=True)
class PluginEntry:
    """One entry point of a group, as listed (nothing imported)."""

    name: str
    group: str
    value: str  # "package.module:attribute"
    distribution: str  # "name version" of the distribution that declares it


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "an unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


def not_callable(name: str, obj: Any) -> str | None:
    """A check for :class:`EntryPointGroup`: the object must be callable."""
    return None if callable(obj) else f"it is a {type(obj).__name__}, not a callable"


class EntryPointGroup:
    """The entry points of one group: listed without importing, loaded by name and cached.

    Args:
        group: the entry-point group (``okdph.models``, ...).
        kind: what an entry point provides, for messages (``model``, ``dataset``, ...).
        check: ``check(name, obj)`` says why entry point ``name``'s object is unusable
            (``None``: usable).
        error: the exception type raised for a broken entry point (one sentence).
    """

    def __init__(
        self,
        group: str,
        kind: str,
        check: Callable[[str, Any], str | None] | None = not_callable,
        error: type[Exception] = PluginError,
    ) -> None:
        self.group = group
        self.kind = kind
        self.check = check
        self.error = error
        self._found: tuple[tuple[str, ...], dict[str, list[EntryPoint]]] | None = None
        self._loaded: dict[tuple[str, str], Any] = {}

    def _entry_points(self) -> dict[str, list[EntryPoint]]:
        key = tuple(sys.path)
        if self._found is None or self._found[0] != key:
            found: dict[str, list[EntryPoint]] = {}
            for ep in entry_points(group=self.group):
                same = found.setdefault(ep.name, [])
                if all(other.value != ep.value for other in same):
                    same.append(ep)
            self._found = (key, found)
            self._loaded = {}  # another sys.path: the same entry point may import other code
        return self._found[1]

    def names(self) -> list[str]:
        """Names of the group's entry points, sorted."""
        return sorted(self._entry_points())

    def entries(self) -> list[PluginEntry]:
        """Every entry point of the group with its distribution, sorted by name."""
        return [
            PluginEntry(name, self.group, ep.value, _distribution(ep))
            for name, eps in sorted(self._entry_points().items())
            for ep in eps
        ]

    def load(self, name: str) -> Any | None:
        """The object of entry point ``name`` (``None`` when no distribution declares it).

        Raises the group's error (one sentence) when the entry point is broken or ambiguous.
        """
        eps = self._entry_points().get(name)
        if not eps:
            return None
        if len(eps) > 1:
            owners = " and ".join(f"{_distribution(ep)} ({ep.value})" for ep in eps)
            raise self.error(
                f"the {self.kind} entry point {name!r} in group {self.group} is declared by "
                f"{owners}; uninstall one of them"
            )
        ep = eps[0]
        where = (
            f"the {self.kind} entry point {name!r} ({ep.value}) of distribution "
            f"{_distribution(ep)} in group {self.group}"
        )
        key = (name, ep.value)
        if key not in self._loaded:
            try:
                obj = ep.load()
            except Exception as err:  # third-party code: any failure is the plug-in's
                raise self.error(f"{where} failed to load ({_one_line(err)})") from None
            problem = self.check(name, obj) if self.check is not None else None
            if problem:
                raise self.error(f"{where} is not usable: {problem}")
            self._loaded[key] = obj
        return self._loaded[key]


def is_import_path(text: str) -> bool:
    """Whether ``text`` is an import path ``package.module:attribute``: a dotted module name, one
    ``:``, and a (dotted) attribute name, all Python identifiers. ``resnet32`` and
    ``cnn_digits:width=32`` are not; ``torchvision.models:resnet18`` and ``my_models:Net`` are."""
    module, sep, attr = text.partition(":")
    return bool(sep) and _dotted(module) and _dotted(attr)


def _dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def import_object(path: str, kind: str, error: type[Exception] = PluginError) -> Any:
    """The callable named by the import path ``package.module:attribute``.

    Raises ``error`` with one sentence when the module does not import, the attribute is missing
    or the object is not callable; ``kind`` (``model``, ``dataset``) names what it is for.
    """
    if not is_import_path(path):
        raise error(f"{path!r} is not an import path of the form package.module:callable")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(f"{err.name}.")):
            raise error(
                f"cannot import module {module_name!r} of the {kind} {path!r}: no module named "
                f"{err.name!r} (install it, or put its folder on PYTHONPATH)"
            ) from None
        raise error(
            f"importing module {module_name!r} of the {kind} {path!r} failed ({_one_line(err)})"
        ) from None
    except Exception as err:
        raise error(
            f"importing module {module_name!r} of the {kind} {path!r} failed ({_one_line(err)})"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise error(
                f"module {module_name!r} has no attribute {attr!r} (the {kind} {path!r})"
            ) from None
    if not callable(obj):
        raise error(f"the {kind} {path!r} is a {type(obj).__name__}, not a callable")
    return obj


__all__ = [
    "EntryPointGroup",
    "PluginEntry",
    "PluginError",
    "import_object",
    "is_import_path",
    "not_callable",
]
