"""``plane``: the loss on the plane through two students and the hybrid (or a third student)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from landscape.geometry.batchnorm import running_stat_names
from landscape.geometry.directions import random_direction
from landscape.geometry.subspace import plane_through
from landscape.geometry.surface import grid_coordinates, plane_grid
from landscape.geometry.weights import parameter_names
from landscape.measures.base import (
    Figures,
    Measure,
    MeasureContext,
    PieceKey,
    Scope,
    Section,
    Target,
    tag,
)
from landscape.measures.interp import AlignSettings, aligned_states
from landscape.measures.surfaces import (
    DEFINITION,
    GridSettings,
    evaluate_surface,
    surface_record,
    surface_summary,
)
from landscape.report import figures


@dataclass(frozen=True)
class PlaneSettings(AlignSettings, GridSettings):
    def validate(self) -> None:
        GridSettings.validate(self)
        AlignSettings.validate(self)


class PlaneSurface(Measure):
    """The training loss on the plane through three members; when the third is the two
    students' midpoint (a 2-student OKDPH checkpoint), the plane of the students' line and a
    random direction through the midpoint."""

    name = "plane"
    scope = Scope.PLANE
    settings = PlaneSettings
    definition = DEFINITION
    summary_group = "surfaces"
    section = Section(
        "plane",
        "Plane at epoch {epoch}",
        "Loss on the plane through two students and the hybrid (or a third student), in true "
        "L2 units. When the hybrid is the students' midpoint, the plane holds their line and an "
        "orthogonal random direction through the midpoint (the record's 'kind' says which).",
    )

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        epoch, members = target.epoch, target.members
        a, b, c = members
        template = ctx.template(a)
        names = parameter_names(template)
        stats = [
            n for n in running_stat_names(template) if ctx.state(epoch, a)[n].is_floating_point()
        ]
        alignment: dict[str, Any] | None = None
        if settings.align == "weights":  # b and c permuted to match a
            (sa, sb, sc), alignment = aligned_states(ctx, epoch, members, ctx.settings.seed)
        else:
            sa, sb, sc = (ctx.state(epoch, m) for m in members)
        gap = max(
            float((sc[n].double() - (sa[n].double() + sb[n].double()) / 2).abs().max())
            for n in names
        )
        scale = max(float(sa[n].abs().max()) for n in names)
        if gap > 1e-6 * scale:
            plane = plane_through(sa, sb, sc, names, buffers=stats, labels=(a, b, c))
            kind = "through the three members"
            xs, ys = plane_grid(plane, settings.grid, margin=0.3)
        else:
            # c is the midpoint of a and b: pick a random direction, orthogonalise it against
            # b - a, give it the length |b - a|, and span the plane with c as the origin.
            r = random_direction(sc, names, seed=torch.Generator().manual_seed(ctx.settings.seed))
            ab = {n: sb[n].double() - sa[n].double() for n in names}
            ab2 = sum(float((t * t).sum()) for t in ab.values())
            proj = sum(float((r[n].double() * ab[n]).sum()) for n in names) / ab2
            perp = {n: r[n].double() - proj * ab[n] for n in names}
            length = math.sqrt(sum(float((t * t).sum()) for t in perp.values()))
            side = {
                n: (sc[n].double() + perp[n] * math.sqrt(ab2) / length).to(sc[n].dtype)
                for n in names
            }
            pseudo = {**sc, **side}
            plane = plane_through(sc, sb, pseudo, names, buffers=stats, labels=(c, b, "random"))
            half = math.sqrt(ab2) / 2
            plane = dataclasses.replace(
                plane, coordinates={c: (0.0, 0.0), b: (half, 0.0), a: (-half, 0.0)}
            )
            kind = (
                f"{c} is the midpoint of {a} and {b}: their line and an orthogonal random direction"
            )
            xs = ys = grid_coordinates(1.6 * half, settings.grid)
        result = evaluate_surface(ctx, template, None, plane, [xs, ys], workdir, True)
        points = {m: list(plane.coordinates[m]) for m in members}
        return surface_record(
            result,
            f"plane of {', '.join(members)}, epoch {epoch}",
            {"x": "L2 distance along axis 1", "y": "L2 distance along axis 2"},
            points,
            kind=kind,
            plane=plane.to_dict(),
            equal_axes=True,
            **({"alignment": alignment} if alignment is not None else {}),
        )

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return surface_summary(record)

    def figures(self, records: Mapping[PieceKey, Mapping[str, Any]], epoch: int | None) -> Figures:
        out: Figures = []
        for rec in records.values():
            out.append((f"plane_{tag(epoch)}", figures.surface_figure(rec, kind="contour")))
            out.append((f"plane3d_{tag(epoch)}", figures.surface_figure(rec, kind="surface3d")))
        return out
