"""``eigen``: the extreme eigenvalues of the Hessian of the training loss, certified."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from landscape.core import definitions
from landscape.curvature.eigenvalues import Spectrum, top_eigenvalues
from landscape.curvature.lanczos import TOL_SCALES
from landscape.curvature.products import HessianOperator
from landscape.measures.base import (
    Field,
    Figures,
    Measure,
    MeasureContext,
    PieceKey,
    Section,
    Target,
    members_of,
    require,
    tag,
)
from landscape.measures.common import bn_label, hessian_inputs
from landscape.report import figures

#: The section of the per-member curvature figures (after the flatness table).
CURVATURE = Section(
    "curvature",
    "Curvature at epoch {epoch}",
    "Extreme Hessian eigenvalues (with certified error bars), trace (Hutch++) and "
    "spectral density (stochastic Lanczos quadrature) of the mean training loss; "
    "adaptive sharpness (Andriushchenko et al. 2023) as the loss increase in an L2 "
    "ball scaled by |w|, BatchNorm statistics fixed: worst case by Auto-PGD over "
    "groups of m samples (m-sharpness) and over the whole subset, average case over "
    "antithetic Gaussian pairs. Headline values are at each grid's largest radius.",
)


@dataclass(frozen=True)
class SolverSettings:
    """How an eigen-solve stops and what it certifies (``eigen`` and ``adaptive``: one knob)."""

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

    def validate(self) -> None:
        require(self.tol > 0, f"--tol must be positive, not {self.tol}")
        require(0 <= self.certify_top < 1, f"certify_top must be in [0, 1), not {self.certify_top}")
        require(self.tol_scale in TOL_SCALES, f"--tol-scale must be one of {', '.join(TOL_SCALES)}")


@dataclass(frozen=True)
class EigenSettings(SolverSettings):
    k: int = field(default=5, metadata={"help": "eigenvalues at each end of the spectrum"})

    def validate(self) -> None:
        super().validate()
        require(self.k >= 1, f"--k must be positive, not {self.k}")


def certified_eigenvalues(
    ctx: MeasureContext, operator: HessianOperator, settings: Any, *, k: int, which: str
) -> Spectrum:
    """``top_eigenvalues`` of ``operator`` under the solver settings and the analysis' seed,
    device, progress and basis placement."""
    return top_eigenvalues(
        operator,
        k=k,
        which=which,
        tol=settings.tol,
        tol_scale=settings.tol_scale,
        certify_top=settings.certify_top or None,
        basis_device="cpu" if ctx.settings.lanczos_basis == "cpu" else None,
        seed=ctx.settings.seed,
        show_progress=ctx.show,
    )


class Eigen(Measure):
    """The ``k`` largest and smallest Ritz values of thick-restart Lanczos, with certified
    residual bounds and (``certify_top``) a search for eigenvalues the solve missed."""

    name = "eigen"
    settings = EigenSettings
    definition = definitions.definition("eigen")
    fields = (
        Field("lambda_max", "\u03bb max", compare=True, log=True, correlate=True, strip=True),
        Field("lambda_min", "\u03bb min"),
        Field("eigen_converged"),
        Field("eigen_search_added"),
    )
    section = CURVATURE

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        model, data, _ = hessian_inputs(ctx, target)
        op = HessianOperator(model, F.cross_entropy, data, device=ctx.device)
        result = certified_eigenvalues(ctx, op, settings, k=settings.k, which="both")
        return {**result.to_dict(), "bn": bn_label(ctx, target.key.member, model)}

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        out = {
            "lambda_max": max(record["values"]),
            "lambda_min": min(record["values"]),
            "eigen_converged": all(record["converged"]),
        }
        if record.get("search"):
            out["eigen_search_added"] = record["added"]
        return out

    def figures(self, records: Mapping[PieceKey, Mapping[str, Any]], epoch: int | None) -> Figures:
        return [(f"spectrum_{tag(epoch)}", figures.spectrum_figure(members_of(records)))]
