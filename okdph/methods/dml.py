"""Deep Mutual Learning (Zhang et al. 2018) as shipped with OKDPH (``src/01_DML.py``).

Each student matches its peers' (detached) predictions; predictions are computed once per batch and
all students step together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from okdph.config import ConfigError
from okdph.methods.base import Method, StepContext, kd_loss, register_method


@register_method
class DML(Method):
    name = "dml"
    loss_terms = {
        "student_i/ce": "CE(z_i, y)",
        "student_i/kd": "mean_{j != i} T^2 KL(softmax(z_j/T) || softmax(z_i/T)), z_j detached",
        "student_i/loss": "ce_i + kd_weight * kd_i",
        "loss": "sum_i student_i/loss",
    }

    @dataclass
    class Config:
        temperature: float = 1.0
        kd_weight: float = 1.0

        def validate(self) -> None:
            if self.temperature <= 0:
                raise ConfigError(f"method.temperature must be positive, got {self.temperature}")
            if self.kd_weight < 0:
                raise ConfigError(f"method.kd_weight must not be negative, got {self.kd_weight}")

    def compute_loss(
        self, views: list[Tensor], y: Tensor, ctx: StepContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        logits = [net(x) for net, x in zip(self.students, views)]
        terms: dict[str, Tensor] = {}
        total: Tensor = 0.0  # type: ignore[assignment]  # a tensor once a member's loss is added
        for i, z in enumerate(logits):
            ce = F.cross_entropy(z, y)
            peers = [p.detach() for j, p in enumerate(logits) if j != i]
            # With a single student there is no peer: kd is a zero tensor (the trainer logs it).
            kd = (
                torch.stack([kd_loss(z, p, cfg.temperature) for p in peers]).mean()
                if peers
                else ce.new_zeros(())
            )
            loss = ce + cfg.kd_weight * kd
            terms.update({f"student_{i}/ce": ce, f"student_{i}/kd": kd, f"student_{i}/loss": loss})
            total = total + loss
        terms["loss"] = total
        return total, terms
