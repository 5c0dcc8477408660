"""The adaptive Hessian ``T H T`` with ``T = diag(|w| + eta)`` (Kwon et al. 2021, ASAM;
Andriushchenko et al. 2023).

Rescaling a parameter by ``d`` (and the loss being unchanged, as when a ReLU layer is scaled by
``c`` and the next one by ``1/c``) turns ``H`` into ``D^-1 H D^-1`` and ``|w|`` into ``D |w|``,
so with ``eta = 0`` the operator ``T H T`` is unchanged: its eigenvalues and trace are invariant
to such reparametrisations, unlike those of ``H``. They are also the curvature that adaptive
sharpness sees: for a twice-differentiable loss its Gaussian average case is
``rho^2 / 2 tr(THT) + O(rho^4)`` at any point, and its worst case over the whole subset is
``rho^2 / 2 lambda_max(THT) + O(rho^3)`` where the gradient vanishes (elsewhere the worst case is
``rho ||T g|| + O(rho^2)``). A ReLU network's loss has kinks that perturbations of a few percent
of |w| cross, so there these limits hold only approximately.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from landscape.core.batches import Batch
from landscape.curvature.products import HessianOperator, LossFn


class AdaptiveHessianOperator(HessianOperator):
    """``T H T`` for the Hessian ``H`` of :class:`HessianOperator` (same arguments), with
    ``T = diag(|w| + eta)`` over the selected parameters at the operator's point.

    Products are in loss units (the scale carries the parameters' units).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Iterable[Batch],
        *,
        eta: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, loss_fn, data, **kwargs)
        self.eta = float(eta)
        self.scale = torch.cat([p.abs().flatten() + self.eta for p in self._point])

    def matmat(self, vectors: Tensor) -> Tensor:
        """``T H T v`` for each row ``v`` of ``vectors`` ``(k, n)``."""
        vectors = vectors.to(device=self.device, dtype=self.dtype)
        return self.scale * super().matmat(vectors * self.scale)
