"""``adaptive``: top eigenvalue and trace of the adaptive Hessian ``T H T``, ``T = |w| + eta``.

The same solvers, certificates and intervals as ``eigen`` and ``trace``, on the operator of
:mod:`landscape.curvature.adaptive`: invariant (for ``eta = 0``) to rescaling a layer by ``c`` and
the next by ``1/c``, and the curvature behind adaptive sharpness (same parameters and scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from landscape.curvature.adaptive import AdaptiveHessianOperator
from landscape.curvature.trace import hessian_trace
from landscape.measures.base import Field, Measure, MeasureContext, Target, require
from landscape.measures.common import bn_label, hessian_inputs
from landscape.measures.eigen import CURVATURE, SolverSettings, certified_eigenvalues
from landscape.measures.trace import TraceSettings

DEFINITION = (
    "adaptive/3: top Ritz value (certified as eigen/5, k = 1) and adaptive Hutch++ trace (as "
    "trace/2) of T H T, T = diag(|w| + eta) over all trainable parameters, H the Hessian of the "
    "mean cross-entropy on the training subset"
)


@dataclass(frozen=True)
class AdaptiveSettings(TraceSettings, SolverSettings):
    adaptive_eta: float = field(
        default=0.0, metadata={"help": "offset of the adaptive scale |w| + eta (0: invariant)"}
    )

    def validate(self) -> None:
        SolverSettings.validate(self)
        TraceSettings.validate(self)
        require(self.adaptive_eta >= 0, f"--adaptive-eta must be >= 0, not {self.adaptive_eta}")


class AdaptiveCurvature(Measure):
    """The largest eigenvalue and the trace of the adaptive Hessian, in loss units."""

    name = "adaptive"
    settings = AdaptiveSettings
    definition = DEFINITION
    default = False  # an eigen-solve and a trace more per member: asked for by name
    fields = (
        Field(
            "adaptive_lambda_max",
            "adaptive \u03bb max",
            compare=True,
            log=True,
            invariant=True,
            correlate=True,
            strip=True,
        ),
        Field(
            "adaptive_trace",
            "adaptive trace",
            compare=True,
            log=True,
            invariant=True,
            correlate=True,
            strip=True,
        ),
        Field("adaptive_trace_stderr"),
    )
    section = CURVATURE

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        model, data, common = hessian_inputs(ctx, target)
        op = AdaptiveHessianOperator(
            model, F.cross_entropy, data, eta=settings.adaptive_eta, device=ctx.device
        )
        top = certified_eigenvalues(ctx, op, settings, k=1, which="largest")
        trace = hessian_trace(op, None, None, rtol=settings.trace_rtol, **common)
        return {
            "definition": self.definition,
            "eta": settings.adaptive_eta,
            "eigen": top.to_dict(),
            "trace": trace.to_dict(),
            "bn": bn_label(ctx, target.key.member, model),
        }

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "adaptive_lambda_max": max(record["eigen"]["values"]),
            "adaptive_trace": record["trace"]["value"],
            "adaptive_trace_stderr": record["trace"]["stderr"],
        }
