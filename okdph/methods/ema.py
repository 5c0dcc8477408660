"""EMA: mean-teacher training (Tarvainen & Valpola 2017), a flat-minima positive control, as the
OKDPH repository's ``src/11_EMA.py`` runs it (with single-head networks, as its baseline.sh).

Each student ``i`` has a teacher ``ema_i`` (role ``average`` in run.json) whose parameters are an
exponential moving average of the student's and which sees its own augmented view, in train mode
(its BatchNorm statistics come from its own forwards, as in the reference). Per batch

    loss_i = CE(z_i, y) + c(e) * sum_n sum_k (softmax(z_i)_nk - softmax(t_i)_nk)^2 / (K B),

t_i the teacher's logits (no gradient), K classes, B the batch (``consistency_type=kl``:
``sum_n KL(softmax(t_i) || softmax(z_i)) / B``), with the ramp-up
``c(e) = consistency * exp(-5 (1 - min(e, R) / R)^2)`` over epochs e (0-based) and R
``rampup_epochs`` (the reference's 5 of 300; unset, 5/300 of the run's epochs). After each step
``t <- a t + (1 - a) w`` with ``a = min(1 - 1 / (s + 1), decay)``, s the steps done (the true mean
until the moving average is more accurate). The teachers start from their own random draws, as
the reference's second network does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from okdph.config import ConfigError
from okdph.methods.base import Method, StepContext, register_method
from okdph.methods.swa import freeze


def consistency_weight(epoch: int, consistency: float, rampup: float) -> float:
    """The reference's sigmoid ramp-up ``consistency * exp(-5 (1 - min(e, R) / R)^2)``."""
    if rampup == 0:
        return consistency
    phase = 1.0 - min(max(epoch, 0.0), rampup) / rampup
    return consistency * math.exp(-5.0 * phase * phase)


@register_method
class EMA(Method):
    name = "ema"
    loss_terms = {
        "student_i/ce": "CE(z_i, y)",
        "student_i/consistency": "sum_nk (softmax(z_i) - softmax(t_i))^2 / (K B), t_i = ema_i's",
        "student_i/loss": "ce_i + c(epoch) consistency_i",
        "loss": "sum_i student_i/loss; ema_i <- a ema_i + (1 - a) student_i after each step",
    }

    @dataclass
    class Config:
        decay: float = 0.99
        consistency: float = 10.0
        rampup_epochs: float | None = None
        consistency_type: str = field(default="mse", metadata={"choices": ("mse", "kl")})

        def validate(self) -> None:
            if not 0 <= self.decay < 1:
                raise ConfigError(f"method.decay must be in [0, 1), got {self.decay}")
            if self.consistency < 0:
                raise ConfigError(f"method.consistency must be >= 0, got {self.consistency}")
            if self.rampup_epochs is not None and self.rampup_epochs < 0:
                raise ConfigError(f"method.rampup_epochs must be >= 0, got {self.rampup_epochs}")

    def build_members(self, make_model, num_students, init) -> dict[str, nn.Module]:
        members = super().build_members(make_model, num_students, init)
        for i in range(num_students):
            members[f"ema_{i}"] = freeze(make_model())
        return members

    @property
    def teachers(self) -> list[nn.Module]:
        return [self.nets[f"ema_{i}"] for i in range(self.num_students)]

    def member_role(self, name: str) -> str:
        return "average" if name.startswith("ema_") else "network"

    def ensemble_members(self) -> list[str]:
        return [f"student_{i}" for i in range(self.num_students)]

    def compute_loss(
        self, views: list[Tensor], y: Tensor, ctx: StepContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        rampup = cfg.rampup_epochs if cfg.rampup_epochs is not None else 5 / 300 * ctx.epochs
        weight = consistency_weight(ctx.epoch, cfg.consistency, rampup)
        n = self.num_students
        terms: dict[str, Tensor] = {}
        total: Tensor | float = 0.0
        for i, (student, teacher) in enumerate(zip(self.students, self.teachers)):
            z = student(views[i])
            with torch.no_grad():
                t = teacher(views[n + i])
            if cfg.consistency_type == "mse":
                cons = (F.softmax(z, 1) - F.softmax(t, 1)).pow(2).sum() / (z.shape[1] * len(y))
            else:
                cons = F.kl_div(F.log_softmax(z, 1), F.softmax(t, 1), reduction="sum") / len(y)
            ce = F.cross_entropy(z, y)
            loss = ce + weight * cons
            terms.update(
                {
                    f"student_{i}/ce": ce,
                    f"student_{i}/consistency": cons,
                    f"student_{i}/loss": loss,
                    f"ema_{i}/ce": F.cross_entropy(t, y),
                }
            )
            total = total + loss
        terms["loss"] = total  # type: ignore[assignment]
        return total, terms  # type: ignore[return-value]

    def after_step(self, ctx: StepContext) -> None:
        a = min(1.0 - 1.0 / (ctx.step + 2), self.config.decay)
        with torch.no_grad():
            for student, teacher in zip(self.students, self.teachers):
                for t, p in zip(teacher.parameters(), student.parameters(), strict=True):
                    t.mul_(a).add_(p, alpha=1.0 - a)
