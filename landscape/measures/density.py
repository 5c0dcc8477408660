"""``density``: the Hessian's spectral density by stochastic Lanczos quadrature."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from landscape.core import definitions
from landscape.curvature.density import spectral_density
from landscape.measures.base import (
    Figures,
    Measure,
    MeasureContext,
    PieceKey,
    Target,
    members_of,
    require,
    tag,
)
from landscape.measures.common import bn_label, hessian_inputs
from landscape.measures.eigen import CURVATURE
from landscape.report import figures


@dataclass(frozen=True)
class DensitySettings:
    density_runs: int = field(default=5, metadata={"help": "SLQ runs (random start vectors)"})
    density_steps: int = field(default=50, metadata={"help": "Lanczos steps per SLQ run"})

    def validate(self) -> None:
        require(
            self.density_runs >= 1 and self.density_steps >= 2,
            "--density-runs must be positive and --density-steps at least 2",
        )


class Density(Measure):
    """Stochastic Lanczos quadrature over Gaussian start vectors, Gaussian broadening."""

    name = "density"
    settings = DensitySettings
    definition = definitions.definition("density")
    section = CURVATURE

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        model, data, common = hessian_inputs(ctx, target)
        result = spectral_density(
            model,
            F.cross_entropy,
            data,
            n_runs=settings.density_runs,
            n_steps=settings.density_steps,
            **common,
        )
        return {**result.to_dict(), "bn": bn_label(ctx, target.key.member, model)}

    def figures(self, records: Mapping[PieceKey, Mapping[str, Any]], epoch: int | None) -> Figures:
        return [(f"density_{tag(epoch)}", figures.density_figure(members_of(records)))]
