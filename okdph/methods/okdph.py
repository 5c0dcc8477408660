"""OKDPH: online knowledge distillation via parameter hybridisation (Zhang et al., CVPR 2023).

Per batch, the hybrid-weight model (HWM) theta_h = sum_m r_m theta_m is built from the students;
student m minimises  omega CE(z_m, y) + (1 - omega) CE(z_h, y) + beta T^2 KL(t || z_m),
with t the detached mean of the students' and the HWM's logits. Every ``fusion_every`` the students
are pulled towards the HWM: theta_m <- gamma theta_h + (1 - gamma) theta_m.

Two readings of the method, recorded in run.json:

* ``mode="paper"`` (default): r ~ Dirichlet(alpha) every batch and the HWM is built functionally,
  so CE(z_h, y) sends each student the gradient r_m * dCE/dtheta_h. The joint loss back-propagated
  is sum_m (omega ce_m + beta kd_m) + (1 - omega) ce_h, which gives every student exactly the
  gradient of its own objective (summing the students' objectives would count ce_h M times).
* ``mode="code"`` (the released code, ``src/OKDPH.py``): r = 1/M and the HWM is a detached copy,
  so ce_h influences no student; the HWM acts only through the teacher and fusion.

``hwm_sampling`` and ``hwm_grad`` override either half of a mode for ablations.

Fusion follows the reading too:

* paper: towards the HWM of the students after the step (fresh coefficients); at epoch
  granularity before the next epoch's first batch, so checkpoints show the students as trained.
* code, as ``src/OKDPH.py`` orders it: towards the HWM built at the start of the batch, before
  the step (its BatchNorm statistics updated by its own forward), so with gamma = 1 the batch's
  update is discarded; at epoch granularity after the epoch's test and before its checkpoint,
  towards the HWM of the epoch's last batch. Checkpoints then hold the students after fusion
  and, as ``hybrid``, that last HWM, as the reference's ``--save`` files do; the epoch's test
  metrics are those before fusion (as the reference logs them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from okdph.config import ConfigError
from okdph.hybrid import barycentre, convex_combination, fuse_, sample_coefficients
from okdph.methods.base import Method, StepContext, kd_loss, register_method

_MODES = {
    "paper": ("dirichlet", "through", "post_step"),
    "code": ("mean", "detached", "pre_step"),
}


def parse_interval(text: str) -> tuple[int, str] | None:
    """``"1_epoch"`` -> (1, "epoch"), ``"5_batch"`` -> (5, "batch"), ``"off"`` -> None."""
    if text in ("off", "none", "never"):
        return None
    count, _, unit = text.partition("_")
    unit = {"epoch": "epoch", "epochs": "epoch", "batch": "batch", "batches": "batch"}.get(unit, "")
    if unit and count.isdigit() and int(count) > 0:
        return int(count), unit
    raise ConfigError(f"fusion_every must look like '1_epoch', '5_batch' or 'off', got {text!r}")


@register_method
class OKDPH(Method):
    name = "okdph"
    default_init = "shared"
    loss_terms = {
        "student_i/ce": "CE(z_i, y)",
        "hybrid/ce": "CE(z_h, y), z_h = f(x_h; sum_m r_m theta_m)",
        "student_i/kd": "T^2 KL(softmax(t/T) || softmax(z_i/T)), t = mean(z_1..z_M[, z_h]) detached",
        "student_i/loss": "omega ce_i + (1 - omega) hybrid/ce + beta kd_i",
        "loss": "sum_i (omega ce_i + beta kd_i) + (1 - omega) hybrid/ce "
        "(hybrid/ce carries no gradient when hwm_grad = detached)",
    }

    @dataclass
    class Config:
        mode: str = field(default="paper", metadata={"choices": tuple(_MODES)})
        # The next three default (None) to what the mode says.
        hwm_sampling: str | None = field(default=None, metadata={"choices": ("dirichlet", "mean")})
        hwm_grad: str | None = field(default=None, metadata={"choices": ("through", "detached")})
        fusion_target: str | None = field(
            default=None, metadata={"choices": ("post_step", "pre_step")}
        )
        alpha: float = 1.0
        omega: float = 0.8
        beta: float = 0.8
        temperature: float = 4.0
        hwm_in_teacher: bool = True
        fusion_every: str = "1_epoch"
        fusion_gamma: float = 0.5

        def validate(self) -> None:
            sampling, grad, target = _MODES[self.mode]
            self.hwm_sampling = self.hwm_sampling or sampling
            self.hwm_grad = self.hwm_grad or grad
            self.fusion_target = self.fusion_target or target
            if not 0.0 <= self.fusion_gamma <= 1.0:
                raise ConfigError(
                    f"method.fusion_gamma must lie in [0, 1], got {self.fusion_gamma}"
                )
            if self.alpha <= 0:
                raise ConfigError(f"method.alpha must be positive, got {self.alpha}")
            if not 0.0 <= self.omega <= 1.0:
                raise ConfigError(f"method.omega must lie in [0, 1], got {self.omega}")
            if self.beta < 0:
                raise ConfigError(f"method.beta must not be negative, got {self.beta}")
            if self.temperature <= 0:
                raise ConfigError(f"method.temperature must be positive, got {self.temperature}")
            parse_interval(self.fusion_every)

    def __init__(self, config, make_model, num_students, init):
        if num_students < 2:
            # One student would train silently as its own hybrid: plain cross-entropy, no OKDPH.
            raise ConfigError(
                f"okdph needs num_students >= 2 (the hybrid of one student is that student), "
                f"got {num_students}"
            )
        super().__init__(config, make_model, num_students, init)
        self.fusion = parse_interval(config.fusion_every)
        self.coefficients = np.full(num_students, 1.0 / num_students)
        # Code reading: the HWM as built for the last batch (before its step), the fusion target.
        self.last_hybrid: dict[str, Tensor] | None = None

    @property
    def pre_step_fusion(self) -> bool:
        return self.config.fusion_target == "pre_step"

    def describe(self) -> dict:
        out = super().describe()
        out["checkpoint_hybrid"] = (
            "the HWM of the epoch's last batch, built before its step (as the reference saves)"
            if self.pre_step_fusion
            else "the barycentre of the checkpoint's students"
        )
        out["checkpoint_students"] = (
            "after the epoch's fusion (test metrics are from before it)"
            if self.pre_step_fusion
            else "as trained (an epoch fusion happens before the next epoch)"
        )
        return out

    @property
    def num_views(self) -> int:
        return self.num_students + 1  # the HWM sees a view of its own

    def hybrid_state(self, coefficients, grad: bool = False) -> dict[str, Tensor]:
        """Parameters and buffers of the HWM with the given coefficients (parameters keep their
        graph to the students when ``grad``; buffers never do)."""
        weights = [float(r) for r in coefficients]
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            params = convex_combination(
                [dict(s.named_parameters()) for s in self.students], weights
            )
        with torch.no_grad():
            buffers = convex_combination([dict(s.named_buffers()) for s in self.students], weights)
        return {**params, **buffers}

    def hybrid_forward(
        self, x: Tensor, coefficients, grad: bool = False, state: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Logits of the HWM on ``x`` (``state``: a ready :meth:`hybrid_state`); in train mode
        BatchNorm uses the batch's statistics and updates the HWM's running statistics, as the
        reference's separate HWM network does."""
        state = state if state is not None else self.hybrid_state(coefficients, grad)
        out = functional_call(self.students[0], state, (x,))
        if self.pre_step_fusion:
            self.last_hybrid = {k: v.detach().clone() for k, v in state.items()}
        return out

    def compute_loss(
        self, views: list[Tensor], y: Tensor, ctx: StepContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        M = self.num_students
        self.coefficients = sample_coefficients(M, ctx.rng, cfg.hwm_sampling, cfg.alpha)
        # The HWM is built before the students' forwards (as the reference's update_hwm at the
        # start of a batch), so its BatchNorm statistics are the students' before this batch.
        state = self.hybrid_state(self.coefficients, grad=cfg.hwm_grad == "through")
        logits = [net(x) for net, x in zip(self.students, views)]
        z_h = self.hybrid_forward(views[M], self.coefficients, state=state)
        teacher_parts = logits + [z_h] if cfg.hwm_in_teacher else logits
        teacher = torch.stack(teacher_parts).mean(0).detach()
        ce_h = F.cross_entropy(z_h, y)
        terms: dict[str, Tensor] = {"hybrid/ce": ce_h.detach()}
        total = (1 - cfg.omega) * ce_h
        for i, z in enumerate(logits):
            ce = F.cross_entropy(z, y)
            kd = kd_loss(z, teacher, cfg.temperature)
            own = cfg.omega * ce + cfg.beta * kd
            total = total + own
            terms.update(
                {
                    f"student_{i}/ce": ce,
                    f"student_{i}/kd": kd,
                    f"student_{i}/loss": own + (1 - cfg.omega) * ce_h.detach(),
                }
            )
        terms["loss"] = total
        return total, terms

    def _fuse(self, coefficients) -> None:
        with torch.no_grad():
            target = self.hybrid_state(coefficients)
            for student in self.students:
                fuse_(student, target, self.config.fusion_gamma)

    def _fuse_towards(self, target: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for student in self.students:
                fuse_(student, target, self.config.fusion_gamma)

    def after_step(self, ctx: StepContext) -> None:
        if self.fusion and self.fusion[1] == "batch" and ctx.batch % self.fusion[0] == 0:
            if self.pre_step_fusion and self.last_hybrid is not None:
                self._fuse_towards(self.last_hybrid)
            else:
                self._fuse(self.coefficients)

    def _epoch_fusion_due(self, epochs_done: int) -> bool:
        # "Every N epochs" fuses after epochs 0, N, 2N, ... (0-based, as the reference code).
        return bool(
            self.fusion
            and self.fusion[1] == "epoch"
            and epochs_done >= 1
            and (epochs_done - 1) % self.fusion[0] == 0
        )

    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        # Paper reading: before the next epoch, so checkpoints hold the students as trained.
        if not self.pre_step_fusion and self._epoch_fusion_due(epoch):
            cfg = self.config
            self._fuse(sample_coefficients(self.num_students, rng, cfg.hwm_sampling, cfg.alpha))

    def end_epoch(self, epochs_done: int) -> None:
        # Code reading: after the epoch's test, before its checkpoint, towards the last HWM.
        if self.pre_step_fusion and self._epoch_fusion_due(epochs_done):
            if self.last_hybrid is not None:
                self._fuse_towards(self.last_hybrid)

    def barycentre_state(self) -> dict[str, Tensor]:
        """The checkpointed ``hybrid``: mean of the students' floating-point tensors (paper
        reading); the code reading saves the HWM of the last batch, as the reference does."""
        if self.pre_step_fusion and self.last_hybrid is not None:
            return dict(self.last_hybrid)
        return barycentre([s.state_dict() for s in self.students])

    def eval_forwards(self) -> dict[str, Callable[[Tensor], Tensor]]:
        forwards = super().eval_forwards()
        state = self.barycentre_state()
        forwards["hybrid"] = lambda x: functional_call(self.students[0], state, (x,))
        return forwards

    def ensemble_members(self) -> list[str]:
        return [f"student_{i}" for i in range(self.num_students)]

    def checkpoint_states(self) -> dict[str, dict[str, Tensor]]:
        states = super().checkpoint_states()
        states["hybrid"] = self.barycentre_state()
        return states
