"""``sharpness``: adaptive sharpness, worst and average case, on grids of radii."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape.core import definitions
from landscape.geometry.sharpness import sharpness
from landscape.measures.base import (
    Field,
    Figures,
    Measure,
    MeasureContext,
    PieceKey,
    Target,
    members_of,
    require,
    tag,
)
from landscape.measures.eigen import CURVATURE
from landscape.report import figures


@dataclass(frozen=True)
class SharpnessSettings:
    rho_worst: tuple[float, ...] = field(
        default=(0.1, 0.25, 0.5),
        metadata={"help": "worst-case sharpness radii, relative to |w|"},
    )
    rho_average: tuple[float, ...] = field(
        default=(0.01, 0.02, 0.05),
        metadata={"help": "average-case sharpness radii, relative to |w|"},
    )
    sharpness_m: int = field(
        default=128, metadata={"help": "samples per group of worst-case m-sharpness"}
    )

    def validate(self) -> None:
        rhos = (*self.rho_worst, *self.rho_average)
        require(
            bool(self.rho_worst) and bool(self.rho_average) and min(rhos) > 0,
            "sharpness radii (--rho-worst, --rho-average) must be positive",
        )
        require(self.sharpness_m >= 1, f"--sharpness-m must be positive, not {self.sharpness_m}")


class Sharpness(Measure):
    """Adaptive sharpness (Andriushchenko et al. 2023) on both radius grids: worst case by
    Auto-PGD in the |w|-scaled L2 ball, as m-sharpness (groups of ``sharpness_m`` samples) and on
    the whole subset; average case with Gaussian noise of std rho * |w|. The statistics stay at
    the centre's (recalibrated once there for a hybrid under ``bn=recalibrate``); the largest
    radius of each grid is the headline value."""

    name = "sharpness"
    settings = SharpnessSettings
    definition = definitions.definition("sharpness")
    fields = (
        Field(
            "sharpness_average",
            "adaptive sharpness (avg)",
            compare=True,
            log=True,
            invariant=True,
            correlate=True,
            strip=True,
        ),
        Field(
            "sharpness_worst",
            "adaptive m-sharpness (worst)",
            compare=True,
            log=True,
            invariant=True,
            correlate=True,
            strip=True,
        ),
        Field(
            "sharpness_worst_full",
            "adaptive sharpness (worst, whole subset)",
            compare=True,
            log=True,
            invariant=True,
        ),
        Field("sharpness_plateaued", "ascent plateaued"),
        Field("train_loss", "train loss (subset)"),
    )
    section = CURVATURE

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        """``{"worst": [...], "worst_full": [...], "average": [...]}``: one result per radius,
        in grid order."""
        member = target.key.member
        model = ctx.template(member)
        common: dict[str, Any] = {
            "adaptive": True,
            "seed": ctx.settings.seed,
            "center_bn": "recalibrate" if ctx.needs_recalibration(member, model) else "own",
            "device": ctx.device,
            "show_progress": ctx.show,
        }
        m = settings.sharpness_m if settings.sharpness_m < ctx.settings.samples else None
        runs = {
            "worst": [dict(kind="worst", rho=r, m=m) for r in settings.rho_worst],
            "worst_full": [dict(kind="worst", rho=r, m=None) for r in settings.rho_worst],
            "average": [dict(kind="average", rho=r) for r in settings.rho_average],
        }
        data, state = ctx.data("train"), ctx.state(target.epoch, member)
        return {
            name: [sharpness(model, state, data, **kw, **common).to_dict() for kw in kwargs]
            for name, kwargs in runs.items()
        }

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Headline sharpness (each grid's largest radius) and the per-radius values.

        Keys: ``sharpness_worst`` (m-sharpness), ``sharpness_worst_full`` (whole subset),
        ``sharpness_average`` and its ``_stderr``; ``..._by_rho``: ``{rho: value}``;
        ``sharpness_plateaued``: every worst-case ascent had plateaued; ``train_loss``: the
        loss of the analysed training subset at the centre.
        """
        out: dict[str, Any] = {}
        for name in ("worst", "worst_full", "average"):
            results = record.get(name) or []
            if not results:
                continue
            top = max(results, key=lambda r: r["rho"])
            out[f"sharpness_{name}"] = top["value"]
            out[f"sharpness_{name}_by_rho"] = {str(r["rho"]): r["value"] for r in results}
            if name == "average":
                out["sharpness_average_stderr"] = top["stderr"]
                out["train_loss"] = top["clean_loss"]
        worst = [r for n in ("worst", "worst_full") for r in record.get(n) or []]
        if worst:
            out["sharpness_plateaued"] = all(r["plateaued"] for r in worst)
        return out

    def figures(self, records: Mapping[PieceKey, Mapping[str, Any]], epoch: int | None) -> Figures:
        return [(f"sharpness_{tag(epoch)}", figures.sharpness_figure(members_of(records)))]
