"""What the surface measures (``surface``, ``plane``, ``trajectory``) share: the grid setting,
evaluation under the analysis' BatchNorm policy, and the record's layout."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from landscape.core import definitions
from landscape.geometry.surface import surface
from landscape.measures.base import MeasureContext, require

DEFINITION = definitions.definition("surface")


@dataclass(frozen=True)
class GridSettings:
    grid: int = field(default=21, metadata={"help": "points per surface axis (odd)"})

    def validate(self) -> None:
        require(
            self.grid >= 3 and self.grid % 2 == 1,
            f"--grid must be an odd number of at least 3, not {self.grid}",
        )


def evaluate_surface(
    ctx: MeasureContext,
    template: nn.Module,
    center: Any,
    directions: Any,
    grid: Any,
    store: Path | None,
    carries_buffers: bool = False,
    split: str = "train",
) -> Any:
    """A loss surface on the ``split`` subset under the analysis' BatchNorm policy, centre
    included (statistics always recalibrated on the training subset).

    ``interpolate`` needs directions that move the running statistics too (between models); for
    other directions the policy falls back to ``recalibrate`` (the result records which ran).
    """
    s = ctx.settings
    bn = s.bn if s.bn != "interpolate" or carries_buffers else "recalibrate"
    return surface(
        template,
        center,
        ctx.data(split),
        directions=directions,
        grid=grid,
        bn=bn,
        bn_data=ctx.data("train"),
        bn_center="policy",
        seed=s.seed,
        store=store,
        device=ctx.device,
        show_progress=ctx.show,
    )


def surface_record(
    result: Any, title: str, axes: dict[str, str], points: dict[str, list[float]], **extra: Any
) -> dict[str, Any]:
    """The stored form of a surface: its grid, losses and accuracies as Plotly wants them
    (``z[y][x]``), labelled points, and the result's details without its big arrays."""
    detail = result.to_dict()
    for big in ("loss", "accuracy", "nonfinite", "coordinates"):
        detail.pop(big, None)
    return {
        "title": title,
        "x": result.coordinates[0].tolist(),
        "y": result.coordinates[1].tolist(),
        "train": {"loss": result.loss.T.tolist(), "accuracy": result.accuracy.T.tolist()},
        "axes": axes,
        "points": points,
        "detail": detail,
        **extra,
    }


def surface_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """A surface's entry in summary.json's ``surfaces``."""
    detail = record.get("detail", {})
    return {
        "title": record["title"],
        "axes": record["axes"],
        "grid": [len(record["x"]), len(record["y"])],
        "center_loss": detail.get("center_loss"),
        "n_nonfinite": detail.get("n_nonfinite"),
        "bn": detail.get("bn"),
        "directions": detail.get("directions", {}).get("kind"),
    }
