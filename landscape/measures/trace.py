"""``trace``: the trace of the Hessian of the training loss, with a calibrated interval."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from landscape.core import definitions
from landscape.curvature.trace import hessian_trace
from landscape.measures.base import Field, Measure, MeasureContext, Target, require
from landscape.measures.common import bn_label, hessian_inputs
from landscape.measures.eigen import CURVATURE


@dataclass(frozen=True)
class TraceSettings:
    trace_rtol: float = field(
        default=0.05, metadata={"help": "trace relative standard error target"}
    )

    def validate(self) -> None:
        require(self.trace_rtol > 0, f"--trace-rtol must be positive, not {self.trace_rtol}")


class Trace(Measure):
    """Adaptive Hutch++ with Rademacher probes, to a relative standard error."""

    name = "trace"
    settings = TraceSettings
    definition = definitions.definition("trace")
    fields = (
        Field("trace", "trace", compare=True, log=True, correlate=True, strip=True),
        Field("trace_stderr", "trace s.e."),
    )
    section = CURVATURE

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        model, data, common = hessian_inputs(ctx, target)
        result = hessian_trace(model, F.cross_entropy, data, rtol=settings.trace_rtol, **common)
        return {**result.to_dict(), "bn": bn_label(ctx, target.key.member, model)}

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"trace": record["value"], "trace_stderr": record["stderr"]}
