"""Model registry: ``create(name, **kwargs)``, ``factory(name)``, ``list_models()``,
``register(name)`` and ``parse_model_spec(text)``.

A model name is a built-in name, an import path ``package.module:callable`` or an entry point of
the ``okdph.models`` group (see :mod:`okdph.models.registry`).

Every built-in network maps an input batch to logits with ``forward`` and exposes
``features(x)`` (the penultimate, pooled features) and ``classifier`` (the last linear layer), so
distillation methods and analyses can reach the representation without knowing the architecture.
BatchNorm layers are plain ``nn.BatchNorm1d``/``nn.BatchNorm2d`` modules, found by type.
A model from an import path or a plug-in needs only ``forward`` for most methods; the branch
layouts of OKDDip and WML need the branch protocol of ``okdph.models.branches`` as well.

Branch methods (OKDDip, WML) share a trunk between members: see ``okdph.models.branches``.
"""

from okdph.models import (  # noqa: F401  (registers the models)
    cifar_densenet,
    cifar_resnet,
    cifar_vgg,
    small,
)
from okdph.models.registry import (
    ModelError,
    UnknownModelError,
    create,
    factory,
    list_models,
    parse_model_spec,
    register,
)

__all__ = [
    "ModelError",
    "UnknownModelError",
    "create",
    "factory",
    "list_models",
    "parse_model_spec",
    "register",
]
