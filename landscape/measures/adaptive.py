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
from landscape.curvature.eigenvalues import top_eigenvalues
from landscape.curvature.lanczos import TOL_SCALES
from landscape.curvature.trace import hessian_trace
from landscape.measures.base import Field, Measure, MeasureContext, Target, require
from landscape.measures.common import bn_label, hessian_inputs
from landscape.measures.eigen import CURVATURE

DEFINITION = (
    "adaptive/1: top Ritz value (certified as eigen/3, k = 1) and adaptive Hutch++ trace (as "
    "trace/2) of T H T, T = diag(|w| + eta) over all trainable parameters, H the Hessian of the "
    "mean cross-entropy on the training subset"
)


@dataclass(frozen=True)
class AdaptiveSettings:
    adaptive_eta: float = field(
        default=0.0, metadata={"help": "offset of the adaptive scale |w| + eta (0: invariant)"}
    )
    tol: float = field(default=1e-3, metadata={"help": "eigenvalue relative tolerance"})
    certify_top: float = field(
        default=0.01,
        metadata={
            "help": "failure probability of the search for missed eigenvalues (0: no search)"
        },
    )
    tol_scale: str = field(
        default="spectrum",
        metadata={
            "help": "what --tol is relative to: spectrum (the largest |eigenvalue|: a value "
            "near 0 is certified to the spectrum's scale) or value (each value's own)"
        },
    )
    trace_rtol: float = field(
        default=0.05, metadata={"help": "trace relative standard error target"}
    )

    def validate(self) -> None:
        require(self.adaptive_eta >= 0, f"--adaptive-eta must be >= 0, not {self.adaptive_eta}")
        require(self.tol > 0 and self.trace_rtol > 0, "--tol and --trace-rtol must be positive")
        require(self.tol_scale in TOL_SCALES, f"--tol-scale must be one of {', '.join(TOL_SCALES)}")


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
        top = top_eigenvalues(
            op,
            None,
            None,
            k=1,
            which="largest",
            tol=settings.tol,
            tol_scale=settings.tol_scale,
            certify_top=settings.certify_top or None,
            basis_device="cpu" if ctx.settings.lanczos_basis == "cpu" else None,
            **common,
        )
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
