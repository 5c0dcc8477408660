"""KDCL (Guo et al. 2020) with the mean-logit teacher of the OKDPH repository's ``src/03_KDCL.py``.

The teacher is the detached mean of all students' logits; each student sees its own augmented view.
This is the variant OKDPH's comparison ran; the KDCL paper's own teachers ("Naive": the logits of
the student with the lowest cross-entropy, per sample; MinLogit; Linear; General) are different
and not implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from okdph.methods.base import Method, StepContext, kd_loss, register_method


@register_method
class KDCL(Method):
    name = "kdcl"
    loss_terms = {
        "student_i/ce": "CE(z_i, y)",
        "student_i/kd": "T^2 KL(softmax(t/T) || softmax(z_i/T)), t = mean_j z_j detached",
        "student_i/loss": "(1 - alpha) ce_i + alpha kd_i",
        "loss": "sum_i student_i/loss",
    }

    @dataclass
    class Config:
        alpha: float = 0.5
        temperature: float = 4.0

    def compute_loss(
        self, views: list[Tensor], y: Tensor, ctx: StepContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        logits = [net(x) for net, x in zip(self.students, views)]
        teacher = torch.stack(logits).mean(0).detach()
        terms: dict[str, Tensor] = {}
        total = 0.0
        for i, z in enumerate(logits):
            ce = F.cross_entropy(z, y)
            kd = kd_loss(z, teacher, cfg.temperature)
            loss = (1 - cfg.alpha) * ce + cfg.alpha * kd
            terms.update({f"student_{i}/ce": ce, f"student_{i}/kd": kd, f"student_{i}/loss": loss})
            total = total + loss
        terms["loss"] = total
        return total, terms
