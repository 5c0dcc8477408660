"""``pacbayes``: magnitude-aware PAC-Bayes flatness (Jiang et al. 2020, "Fantastic
generalization measures and where to find them", among their best predictors of the gap).

With BatchNorm folded into the layers before it (so the noise sees the weights the network
computes with), every parameter ``w_i`` gets Gaussian noise ``u_i ~ N(0, alpha^2 w_i^2 + eps^2)``
(a *standard deviation* ``sqrt(alpha^2 w_i^2 + eps^2)``, ``eps = 1e-3``). ``alpha`` is the largest
value in ``[0, alpha_max]`` at which the expected training accuracy drops by ``target`` (0.1, to
``tol`` 0.01), found by bisection with common random numbers: the same standard-normal draws at
every step, so the estimated drop is a deterministic, nearly monotone function of ``alpha``. The
Monte Carlo standard error of the drop at the answer is reported. The measure is
``1 / alpha^2`` (higher: sharper), in the units of Jiang et al.'s magnitude-aware bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscape.core.fold import checked_fold_plan, fold_state
from landscape.geometry.batchnorm import batchnorm_layers
from landscape.measures.base import Field, Measure, MeasureContext, Target, require
from landscape.measures.common import bn_label
from landscape.measures.eigen import CURVATURE

DEFINITION = (
    "pacbayes/2: magnitude-aware PAC-Bayes flatness (Jiang et al. 2020) on the training subset, "
    "BatchNorm folded (also in models torch.fx cannot trace, where conv-BN pairs are adjacent "
    "in an nn.Sequential; /1 left those unfolded): the largest alpha in [0, alpha_max] whose noise N(0, alpha^2 w^2 + eps^2) "
    "(eps 1e-3) lowers the expected accuracy by target (tolerance tol), by bisection with common "
    "random numbers; the measure is 1 / alpha^2"
)


@dataclass(frozen=True)
class PacBayesSettings:
    pacbayes_draws: int = field(
        default=32, metadata={"help": "noise draws per bisection step (common to every step)"}
    )
    pacbayes_target: float = field(
        default=0.1, metadata={"help": "drop of the expected training accuracy to reach"}
    )
    pacbayes_tol: float = field(default=0.01, metadata={"help": "tolerance on that drop"})

    def validate(self) -> None:
        require(self.pacbayes_draws >= 2, "--pacbayes-draws must be at least 2")
        require(
            0 < self.pacbayes_tol < self.pacbayes_target < 1,
            "--pacbayes-tol and --pacbayes-target must satisfy 0 < tol < target < 1",
        )


@dataclass(frozen=True)
class PacBayesResult:
    """``alpha``: the noise scale found; ``drop``: the estimated accuracy drop there, with its
    Monte Carlo standard error ``drop_stderr``; ``capped``: the drop stayed below the target up
    to ``alpha_max`` (``alpha`` is then a lower bound of the true one)."""

    alpha: float
    drop: float
    drop_stderr: float
    base_accuracy: float
    steps: int
    capped: bool
    folded: bool
    n_draws: int
    n_samples: int


def pac_bayes_alpha(
    model: nn.Module,
    data: list[tuple[Tensor, Tensor]],
    *,
    target: float = 0.1,
    tol: float = 0.01,
    draws: int = 32,
    eps: float = 1e-3,
    alpha_max: float = 2.0,
    max_steps: int = 30,
    seed: int = 0,
) -> PacBayesResult:
    """The magnitude-aware noise scale ``alpha`` of ``model`` (eval mode) on ``data`` (the
    module docstring); ``model`` is not modified."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    plan = checked_fold_plan(model, state, data[0][0][:8]) if batchnorm_layers(model) else None
    net = plan.module if plan is not None else model
    if plan is not None:
        state = fold_state(plan, state)
    names = [n for n, _ in net.named_parameters()]
    gen = torch.Generator().manual_seed(seed)
    noise = [
        {n: torch.randn(state[n].shape, generator=gen, dtype=torch.float64) for n in names}
        for _ in range(draws)
    ]
    n = sum(len(y) for _, y in data)

    def accuracy(params: Mapping[str, Tensor]) -> float:
        merged = {**state, **params}
        with torch.no_grad():
            hits = sum(
                int((functional_call(net, merged, (x,)).argmax(1) == y).sum()) for x, y in data
            )
        return hits / n

    base = accuracy({})

    def drop(alpha: float) -> tuple[float, float]:
        accs = []
        for z in noise:
            perturbed = {}
            for name in names:
                w = state[name]
                std = torch.sqrt(alpha**2 * w.double() ** 2 + eps**2)
                perturbed[name] = (w.double() + std * z[name].to(w.device)).to(w.dtype)
            accs.append(accuracy(perturbed))
        values = torch.tensor([base - a for a in accs], dtype=torch.float64)
        return float(values.mean()), float(values.std() / math.sqrt(draws))

    lo, hi, steps = 0.0, alpha_max, 0
    d_hi, se_hi = drop(hi)
    if d_hi < target - tol:
        return PacBayesResult(hi, d_hi, se_hi, base, 1, True, plan is not None, draws, n)
    alpha, (d, se) = hi, (d_hi, se_hi)
    while steps < max_steps:
        steps += 1
        alpha = (lo + hi) / 2
        d, se = drop(alpha)
        if abs(d - target) <= tol:
            break
        if d > target:
            hi = alpha
        else:
            lo = alpha
    return PacBayesResult(alpha, d, se, base, steps + 1, False, plan is not None, draws, n)


class PacBayesFlatness(Measure):
    """Magnitude-aware PAC-Bayes flatness ``1 / alpha^2`` and its ``alpha``."""

    name = "pacbayes"
    settings = PacBayesSettings
    definition = DEFINITION
    default = False  # tens of passes over the subset per member: asked for by name
    fields = (
        Field(
            "pacbayes_mag_flatness",
            "PAC-Bayes 1/\u03b1\u00b2",
            compare=True,
            log=True,
            invariant=True,
            correlate=True,
            strip=True,
        ),
        Field("pacbayes_alpha", compare=True, log=True, invariant=True, contrast=False),
    )
    section = CURVATURE

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        member = target.key.member
        model = ctx.model(target.epoch, member)
        result = pac_bayes_alpha(
            model,
            ctx.data("train"),
            target=settings.pacbayes_target,
            tol=settings.pacbayes_tol,
            draws=settings.pacbayes_draws,
            seed=ctx.settings.seed,
        )
        return {
            "definition": self.definition,
            **result.__dict__,
            "mag_flatness": 1 / result.alpha**2,
            "target": settings.pacbayes_target,
            "tol": settings.pacbayes_tol,
            "eps": 1e-3,
            "bn": bn_label(ctx, member, model),
        }

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "pacbayes_alpha": record["alpha"],
            "pacbayes_mag_flatness": record["mag_flatness"],
        }
