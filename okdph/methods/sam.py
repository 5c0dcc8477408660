"""SAM (Foret et al. 2021) and adaptive SAM (Kwon et al. 2021): a flat-minima positive control.

Students train independently, each with sharpness-aware minimisation, as the OKDPH repository's
``src/13_SAM.py`` does (its ``utils/SAM_utils.py``): per batch and network,

1. the loss at ``w`` and its gradient ``g``;
2. the ascent ``e = rho * T^2 g / ||T g||`` with ``T = |w|`` (adaptive, the repository's
   default) or ``T = 1`` (plain SAM, ``method.adaptive=false``), applied in place;
3. the loss at ``w + e`` with BatchNorm's running statistics frozen (momentum 0), whose gradient
   the optimiser applies at ``w`` (the weights are restored exactly before the step).

The loss is cross-entropy with label smoothing 0.1 (the repository's ``smooth_crossentropy``:
``smoothing / (C - 1)`` on every wrong class). The reference sets rho 0.1 on CIFAR-10 and 0.05 on
CIFAR-100 (presets ``<data>-<arch>-sam``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from okdph.config import ConfigError
from okdph.methods.base import Method, StepContext, register_method


def smooth_cross_entropy(logits: Tensor, y: Tensor, smoothing: float) -> Tensor:
    """Batch mean of KL(q || softmax(logits)) with q = 1 - smoothing on the target class and
    smoothing / (C - 1) on each other one (equal to cross-entropy with q up to a constant)."""
    if smoothing == 0.0:
        return F.cross_entropy(logits, y)
    n_class = logits.shape[1]
    target = torch.full_like(logits, smoothing / (n_class - 1))
    target.scatter_(1, y.unsqueeze(1), 1.0 - smoothing)
    return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="none").sum(-1).mean()


class _FrozenStatistics:
    """BatchNorm layers keep their running statistics during a forward (momentum 0)."""

    def __init__(self, net: nn.Module) -> None:
        self.layers = [m for m in net.modules() if isinstance(m, _BatchNorm)]

    def __enter__(self) -> None:
        self.saved = [m.momentum for m in self.layers]
        for m in self.layers:
            m.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, momentum in zip(self.layers, self.saved, strict=True):
            m.momentum = momentum


@register_method
class SAM(Method):
    name = "sam"
    loss_terms = {
        "student_i/ce": "smoothed CE(z_i(w), y), before the ascent",
        "student_i/loss": "smoothed CE(z_i(w + e), y), e = rho T^2 g / ||T g||, T = |w| (adaptive)",
        "loss": "sum_i student_i/loss (its gradient, taken at w + e, is applied at w)",
    }

    @dataclass
    class Config:
        rho: float = 0.05
        adaptive: bool = True
        label_smoothing: float = 0.1

        def validate(self) -> None:
            if self.rho < 0:
                raise ConfigError(f"method.rho must be non-negative, got {self.rho}")
            if not 0 <= self.label_smoothing < 1:
                raise ConfigError(
                    f"method.label_smoothing must be in [0, 1), got {self.label_smoothing}"
                )

    def compute_loss(
        self, views: list[Tensor], y: Tensor, ctx: StepContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        self._saved: list[tuple[list[Tensor], list[Tensor]]] = []
        terms: dict[str, Tensor] = {}
        total: Tensor | float = 0.0
        for i, (net, x) in enumerate(zip(self.students, views)):
            params: list[Tensor] = [p for p in net.parameters() if p.requires_grad]
            first = smooth_cross_entropy(net(x), y, cfg.label_smoothing)
            grads = [ctx.global_mean(g) for g in torch.autograd.grad(first, params)]
            with torch.no_grad():
                scaled = [(p.abs() * g if cfg.adaptive else g) for p, g in zip(params, grads)]
                norm = torch.norm(torch.stack([s.norm(p=2) for s in scaled]), p=2)
                scale = cfg.rho / (norm + 1e-12)
                old = [p.detach().clone() for p in params]
                for p, g in zip(params, grads):
                    p.add_((p * p if cfg.adaptive else 1.0) * g * scale)
            self._saved.append((params, old))
            with _FrozenStatistics(net):
                second = smooth_cross_entropy(net(x), y, cfg.label_smoothing)
            terms.update({f"student_{i}/ce": first.detach(), f"student_{i}/loss": second})
            total = total + second
        terms["loss"] = total  # type: ignore[assignment]
        return total, terms  # type: ignore[return-value]

    def before_step(self, ctx: StepContext) -> None:
        # Back to w (exactly) before the optimiser applies the gradient taken at w + e.
        with torch.no_grad():
            for params, old in self._saved:
                for p, o in zip(params, old):
                    p.copy_(o)
        self._saved = []
