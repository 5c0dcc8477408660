"""``surface``: a filter-normalised random 2D surface around each member."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape.measures.base import (
    Figures,
    Measure,
    MeasureContext,
    PieceKey,
    Section,
    Target,
    require,
    tag,
)
from landscape.measures.surfaces import (
    DEFINITION,
    GridSettings,
    evaluate_surface,
    surface_record,
    surface_summary,
)
from landscape.report import figures


@dataclass(frozen=True)
class RandomSurfaceSettings(GridSettings):
    radius: float = field(
        default=1.0, metadata={"help": "random surfaces' half-width, in filter-normalised units"}
    )

    def validate(self) -> None:
        super().validate()
        require(self.radius > 0, f"--radius must be positive, not {self.radius}")


class RandomSurface(Measure):
    """Training loss on a grid spanned by two Gaussian, filter-normalised directions (Li et al.
    2018), biases and BatchNorm parameters fixed; the same seed for every member."""

    name = "surface"
    settings = RandomSurfaceSettings
    definition = DEFINITION
    summary_group = "surfaces"
    section = Section(
        "surface",
        "Random 2D surfaces at epoch {epoch}",
        "Filter-normalised Gaussian directions (Li et al. 2018), biases and "
        "BatchNorm parameters fixed; the same seed for every member.",
    )

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        member, epoch = target.key.member, target.epoch
        result = evaluate_surface(
            ctx,
            ctx.template(member),
            ctx.state(epoch, member),
            "random",
            (settings.radius, settings.grid),
            workdir,
        )
        unit = result.units
        return surface_record(
            result,
            f"{member}, epoch {epoch}, random directions",
            {"x": f"direction 1 ({unit})", "y": f"direction 2 ({unit})"},
            {member: [0.0, 0.0]},
            equal_axes=True,
        )

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return surface_summary(record)

    def figures(self, records: Mapping[PieceKey, Mapping[str, Any]], epoch: int | None) -> Figures:
        return [
            (f"surface_{tag(epoch)}_{key.member}", figures.surface_figure(rec))
            for key, rec in records.items()
        ]
