"""SWA (Izmailov et al. 2018): a flat-minima positive control, as the OKDPH repository's
``src/12_SWA.py`` runs it (with its ``utils/SWA_utils.py``).

Students train independently with cross-entropy. Each has an averaged copy ``swa_i`` (role
``average`` in run.json):

* learning rate (``own_schedule=true``, the reference's ``schedule``): with ``t = epoch / s``
  (``s`` the start epoch, ``epoch`` 0-based), ``lr = lr_0`` for ``t <= 0.5``, then linearly down to
  ``lr_0 * lr_ratio`` at ``t = 0.9`` and constant after; ``lr_0`` is ``optim.lr`` and the
  reference's ratio is swa_lr / lr_init = 0.001 / 0.1. False keeps the run's step schedule;
* averaging: after epoch ``e`` (1-based) with ``e >= s`` and ``(e - s) % cycle_epochs == 0`` the
  parameters are averaged in, ``swa <- swa (1 - 1/(n+1)) + w / (n+1)`` (n models so far), and
  BatchNorm's running statistics of ``swa_i`` are recomputed by one pass over the training split
  through student ``i``'s augmentation, as ``torch.optim.swa_utils.update_bn`` does (the
  reference's ``bn_update`` computes the same cumulative average);
* before the first average ``swa_i`` is a copy of student ``i`` (weights and statistics), so every
  checkpoint holds the member (the reference keeps an unused fresh network until then).

``start_epoch=0`` takes the reference's start, epoch 241 of 300, scaled to the run's epochs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

from okdph.config import ConfigError
from okdph.methods.base import register_method
from okdph.methods.independent import Independent


def swa_start(start_epoch: int, epochs: int) -> int:
    """The first averaged epoch (1-based): ``start_epoch``, or 241/300 of ``epochs`` when 0."""
    return start_epoch if start_epoch > 0 else max(1, round(epochs * 241 / 300))


def swa_learning_rate(epoch: int, start: int, base_lr: float, lr_ratio: float) -> float:
    """The reference's SWA schedule at 0-based ``epoch``: constant, linear decay, constant."""
    t = epoch / start
    if t <= 0.5:
        factor = 1.0
    elif t <= 0.9:
        factor = 1.0 - (1.0 - lr_ratio) * (t - 0.5) / 0.4
    else:
        factor = lr_ratio
    return base_lr * factor


def freeze(net: nn.Module) -> nn.Module:
    """``net`` with every parameter excluded from gradients (an averaged member)."""
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@register_method
class SWA(Independent):
    name = "swa"
    models_averaged: Tensor  # a buffer registered in __init__ (declared for the type checker)
    loss_terms = {
        "student_i/ce": "CE(z_i, y)",
        "student_i/loss": "CE(z_i, y)",
        "loss": "sum_i CE(z_i, y); swa_i averages student_i's weights from the start epoch on",
    }

    @dataclass
    class Config:
        start_epoch: int = 0
        lr_ratio: float = 0.01
        cycle_epochs: int = 1
        own_schedule: bool = True

        def validate(self) -> None:
            if self.start_epoch < 0:
                raise ConfigError(f"method.start_epoch must be >= 0, got {self.start_epoch}")
            if not 0 < self.lr_ratio <= 1:
                raise ConfigError(f"method.lr_ratio must be in (0, 1], got {self.lr_ratio}")
            if self.cycle_epochs < 1:
                raise ConfigError(f"method.cycle_epochs must be >= 1, got {self.cycle_epochs}")

    def __init__(self, config, make_model, num_students, init) -> None:
        super().__init__(config, make_model, num_students, init)
        self.register_buffer("models_averaged", torch.zeros((), dtype=torch.long))
        self.epochs = 0

    def build_members(self, make_model, num_students, init) -> dict[str, nn.Module]:
        members = super().build_members(make_model, num_students, init)
        for i in range(num_students):
            members[f"swa_{i}"] = freeze(copy.deepcopy(members[f"student_{i}"]))
        return members

    @property
    def averages(self) -> list[nn.Module]:
        return [self.nets[f"swa_{i}"] for i in range(self.num_students)]

    @property
    def num_views(self) -> int:
        return self.num_students

    def member_role(self, name: str) -> str:
        return "average" if name.startswith("swa_") else "network"

    def ensemble_members(self) -> list[str]:
        return [f"student_{i}" for i in range(self.num_students)]

    def learning_rate(self, epoch: int, epochs: int, base_lr: float) -> float | None:
        self.epochs = epochs
        if not self.config.own_schedule:
            return None
        start = swa_start(self.config.start_epoch, epochs)
        return swa_learning_rate(epoch, start, base_lr, self.config.lr_ratio)

    def after_epoch(self, epochs_done: int, batches: Callable[[int], Iterator[Tensor]]) -> None:
        start = swa_start(self.config.start_epoch, self.epochs)
        due = epochs_done >= start and (epochs_done - start) % self.config.cycle_epochs == 0
        n = int(self.models_averaged)
        with torch.no_grad():
            for i, (student, average) in enumerate(zip(self.students, self.averages)):
                if due:
                    for a, p in zip(average.parameters(), student.parameters(), strict=True):
                        a.mul_(1.0 - 1.0 / (n + 1)).add_(p, alpha=1.0 / (n + 1))
                    update_bn(batches(i), average)
                elif n == 0:
                    average.load_state_dict(student.state_dict())
        if due:
            self.models_averaged += 1
