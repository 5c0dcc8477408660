"""Model registry: ``create(name, **kwargs)``, ``list_models()``, ``register(name)``.

Every registered network maps an input batch to logits with ``forward`` and exposes
``features(x)`` (the penultimate, pooled features) and ``classifier`` (the last linear layer), so
distillation methods and analyses can reach the representation without knowing the architecture.
BatchNorm layers are plain ``nn.BatchNorm1d``/``nn.BatchNorm2d`` modules, found by type.

Branch methods (OKDDip, WML) share a trunk between members: see ``okdph.models.branches``.
"""

from okdph.models import (  # noqa: F401  (registers the models)
    cifar_densenet,
    cifar_resnet,
    cifar_vgg,
    small,
)
from okdph.models.registry import UnknownModelError, create, list_models, register

__all__ = ["UnknownModelError", "create", "list_models", "register"]
