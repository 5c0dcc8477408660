"""Online-distillation methods behind a registry: ``build_method(name, ...)``, ``list_methods()``."""

from okdph.methods import (  # noqa: F401  (registers)
    dml,
    ema,
    independent,
    kdcl,
    okddip,
    okdph,
    sam,
    swa,
    wml,
)
from okdph.methods.base import (
    Method,
    StepContext,
    build_method,
    kd_loss,
    list_methods,
    method_class,
    method_options,
    register_method,
)

__all__ = [
    "Method",
    "StepContext",
    "build_method",
    "kd_loss",
    "list_methods",
    "method_class",
    "method_options",
    "register_method",
]
