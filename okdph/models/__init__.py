"""Model registry: ``create(name, **kwargs)``, ``list_models()``, ``register(name)``.

Every registered network maps an input batch to logits with ``forward`` and exposes
``features(x)`` (the penultimate, pooled features) and ``classifier`` (the last linear layer), so
distillation methods and analyses can reach the representation without knowing the architecture.
"""

from okdph.models import cifar_resnet, small  # noqa: F401  (registers the models)
from okdph.models.registry import UnknownModelError, create, list_models, register

__all__ = ["UnknownModelError", "create", "list_models", "register"]
