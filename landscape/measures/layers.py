"""``layers``: curvature of each layer's diagonal Hessian block (asked for by name)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from landscape.core import definitions
from landscape.curvature.layers import layer_curvature
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
class LayerSettings:
    layer_depth: int = field(
        default=2, metadata={"help": "module-path components that name a layer"}
    )
    tol: float = field(default=1e-3, metadata={"help": "eigenvalue relative tolerance"})
    trace_rtol: float = field(
        default=0.05, metadata={"help": "trace relative standard error target"}
    )

    def validate(self) -> None:
        require(self.layer_depth >= 1, f"--layer-depth must be positive, not {self.layer_depth}")
        require(self.tol > 0 and self.trace_rtol > 0, "--tol and --trace-rtol must be positive")


class Layers(Measure):
    """Per parameter group, the top Ritz value and the Hutch++ trace of its Hessian block.
    It costs an eigen-solve and a trace per group, so it runs only when asked for."""

    name = "layers"
    settings = LayerSettings
    default = False
    definition = definitions.definition("layers")
    section = CURVATURE

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        model, data, common = hessian_inputs(ctx, target)
        result = layer_curvature(
            model,
            F.cross_entropy,
            data,
            depth=settings.layer_depth,
            tol=settings.tol,
            rtol=settings.trace_rtol,
            **common,
        )
        return {**result.to_dict(), "bn": bn_label(ctx, target.key.member, model)}

    def figures(self, records: Mapping[PieceKey, Mapping[str, Any]], epoch: int | None) -> Figures:
        return [(f"layers_{tag(epoch)}", figures.layers_figure(members_of(records)))]
