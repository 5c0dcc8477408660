"""Name -> constructor registry for every architecture the trainer and the analyses build.

Both halves of the project rebuild networks only through :func:`create`: a run directory names an
architecture and its keyword arguments. A name is one of

* a built-in model (``resnet32``, registered with :func:`register`);
* an import path ``package.module:callable``: any callable returning an ``nn.Module``
  (``torchvision.models:resnet18``), for models that live outside okdph;
* an entry point of the ``okdph.models`` group, declared by an installed distribution.

Command lines give a model and its arguments as one string (:func:`parse_model_spec`):
``cnn_digits:width=32,bn=true`` or ``package.module:callable:width=32``.
"""

from __future__ import annotations

import fnmatch
import inspect
import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from okdph.config import parse_value
from okdph.plugins import EntryPointGroup, import_object, is_import_path

ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}


class ModelError(ValueError):
    """A model that cannot be built: bad arguments, a result that is not an ``nn.Module``, a bad
    ``name:key=value`` string (one sentence)."""


class UnknownModelError(ModelError):
    """A model name that is neither registered, nor an importable import path, nor a working
    entry point of the ``okdph.models`` group."""


PLUGINS = EntryPointGroup("okdph.models", "model", error=UnknownModelError)


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that registers a model constructor under ``name``."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = factory
        return factory

    return decorate


def list_models(pattern: str = "*", plugins: bool = True) -> list[str]:
    """Model names matching a shell-style ``pattern``, sorted: the built-in ones and (``plugins``)
    those of the ``okdph.models`` entry points (not imported until used)."""
    names = set(_MODELS) | (set(PLUGINS.names()) if plugins else set())
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def factory(name: str) -> ModelFactory:
    """The constructor of model ``name``: a built-in name, an import path
    ``package.module:callable`` or an ``okdph.models`` entry point (to inspect its arguments)."""
    if name in _MODELS:
        return _MODELS[name]
    if is_import_path(name):
        return import_object(name, "model", UnknownModelError)
    found = PLUGINS.load(name)
    if found is not None:
        return found
    hint = (
        "; arguments are keyword arguments here (parse 'name:key=value' with parse_model_spec)"
        if ":" in name
        else ""
    )
    raise UnknownModelError(
        f"unknown model {name!r}; available models: {', '.join(list_models())}, or an import "
        f"path package.module:callable{hint}"
    )


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` (see :func:`factory`) with keyword arguments (``num_classes=100``)."""
    build = factory(name)
    try:
        inspect.signature(build).bind(**kwargs)
    except TypeError as err:
        raise ModelError(
            f"model {name!r} does not accept these arguments {kwargs}: {err}"
        ) from None
    except ValueError:  # no signature to check (a builtin): the call below tells
        pass
    try:
        with warnings.catch_warnings():
            # The empty-layer check below says it in one sentence instead.
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            model = build(**kwargs)
    except TypeError as err:
        raise ModelError(f"model {name!r} does not accept these arguments {kwargs}: {err}") from err
    except (ValueError, RuntimeError) as err:  # torch's word on a value out of range (width=0)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"model {name!r} cannot be built with {kwargs}: {reason}") from err
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    # A width of 0 builds without complaint and fails only at the first forward pass.
    for pname, param in model.named_parameters():
        if not isinstance(param, nn.parameter.UninitializedParameter) and param.numel() == 0:
            raise ModelError(
                f"model {name!r} built with {kwargs} has an empty layer "
                f"({pname} of shape {tuple(param.shape)})"
            )
    return model


def parse_model_spec(text: str) -> tuple[str, dict[str, Any]]:
    """A model and its arguments written as one string -> ``(name, kwargs)``.

    ``"resnet32"`` -> ``("resnet32", {})``; ``"cnn_digits:width=32,bn=true"`` ->
    ``("cnn_digits", {"width": 32, "bn": True})``; ``"torchvision.models:resnet18"`` ->
    ``("torchvision.models:resnet18", {})``; ``"pkg.mod:Net:width=32"`` ->
    ``("pkg.mod:Net", {"width": 32})``.

    The rule: the text before the first ``:`` and the text up to the next ``:`` form an import
    path when both are (dotted) Python identifiers (:func:`okdph.plugins.is_import_path`) and the
    first is not a model name (``cnn_digits:bn`` is a model with a malformed argument); what
    follows is the arguments. Otherwise the name ends at the first ``:``. Arguments are
    ``key=value`` items separated by commas outside brackets (``widths=(16,32),bn=false``), values
    read as Python literals (``true``/``false``/``none`` too), else kept as strings.
    Raises :class:`ModelError` for an empty name or an item that is not ``key=value``.
    """
    text = text.strip()
    head, sep, rest = text.partition(":")
    name, args = head, rest
    if sep:
        attr, _, after = rest.partition(":")
        if is_import_path(f"{head}:{attr}") and head.strip() not in list_models():
            name, args = f"{head}:{attr}", after
    name = name.strip()
    if not name:
        raise ModelError(f"model spec {text!r} names no model")
    kwargs: dict[str, Any] = {}
    for item in _split_arguments(args):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ModelError(
                "model arguments must look like name:key=value,key=value (or "
                f"package.module:callable:key=value), not {text!r}"
            )
        kwargs[key] = parse_value(value.strip())
    return name, kwargs


def _split_arguments(text: str) -> list[str]:
    """``"a=1,b=(2,3)"`` -> ``["a=1", "b=(2,3)"]``: commas inside brackets or quotes stay."""
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]
