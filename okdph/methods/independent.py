"""Independent training: every student minimises its own cross-entropy (the baseline)."""

from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor

from okdph.methods.base import Method, StepContext, register_method


@register_method
class Independent(Method):
    name = "independent"
    loss_terms = {
        "student_i/ce": "CE(z_i, y)",
        "student_i/loss": "CE(z_i, y)",
        "loss": "sum_i CE(z_i, y)",
    }

    def compute_loss(
        self, views: list[Tensor], y: Tensor, ctx: StepContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms = {}
        for i, (net, x) in enumerate(zip(self.students, views)):
            ce = F.cross_entropy(net(x), y)
            terms[f"student_{i}/ce"] = terms[f"student_{i}/loss"] = ce
        # a tensor: there is at least one student (sum() is typed as possibly returning its 0 start)
        total = cast(Tensor, sum(terms[f"student_{i}/loss"] for i in range(self.num_students)))
        terms["loss"] = total
        return total, terms
