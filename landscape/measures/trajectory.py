"""``trajectory``: the loss on the PCA plane of the students' checkpoints, paths drawn on it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landscape.geometry.subspace import pca_trajectory
from landscape.geometry.surface import span_coordinates
from landscape.geometry.weights import parameter_names
from landscape.measures.base import (
    Figures,
    Measure,
    MeasureContext,
    PieceKey,
    Scope,
    Section,
    Target,
    require,
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
class TrajectorySettings(GridSettings):
    max_trajectory: int = field(
        default=40, metadata={"help": "checkpoints per member in the PCA trajectory"}
    )

    def validate(self) -> None:
        super().validate()
        require(
            self.max_trajectory >= 2,
            f"--max-trajectory must be at least 2, not {self.max_trajectory}",
        )


class Trajectory(Measure):
    """The surface on the plane of the first two principal components of the students'
    checkpoints (through their Gram matrix), centred on the final hybrid when there is one."""

    name = "trajectory"
    scope = Scope.RUN
    settings = TrajectorySettings
    definition = DEFINITION
    summary_group = "surfaces"
    section = Section(
        "trajectory",
        "Training trajectories",
        "Surface on the plane of the first two principal components of the "
        "students' checkpoints (computed through their Gram matrix), centred on the "
        "final hybrid when there is one; trajectories projected onto it.",
    )

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        epochs, networks, centre = list(target.epochs), list(target.members), target.centre
        assert centre is not None, "a run-scope target names its centre"
        last = epochs[-1]
        if len(epochs) > settings.max_trajectory:
            pick = np.linspace(0, len(epochs) - 1, settings.max_trajectory).round().astype(int)
            epochs = [epochs[i] for i in np.unique(pick)]
        template = ctx.template(networks[0])
        names = parameter_names(template)
        rows, owners = [], []
        for m in networks:
            for e in epochs:
                rows.append({n: ctx.state(e, m)[n] for n in names})
                owners.append((m, e))
        origin = ctx.state(last, centre)
        pca = pca_trajectory(rows, names, k=2, origin=origin)
        coords = np.asarray(pca.coordinates)
        trajectories = {
            m: coords[[i for i, (o, _) in enumerate(owners) if o == m]].tolist() for m in networks
        }
        pad = 0.15 * (np.ptp(coords, axis=0) + 1e-12)
        xs = span_coordinates(
            coords[:, 0].min() - pad[0], coords[:, 0].max() + pad[0], settings.grid
        )
        ys = span_coordinates(
            coords[:, 1].min() - pad[1], coords[:, 1].max() + pad[1], settings.grid
        )
        result = evaluate_surface(ctx, template, origin, pca, [xs, ys], workdir)
        ratio = [float(v) for v in pca.explained_variance_ratio]
        points = {centre: [0.0, 0.0]}
        for m in networks:
            points[m] = trajectories[m][-1]
        return surface_record(
            result,
            f"PCA of the trajectories of {', '.join(networks)} (epochs {epochs[0]}-{epochs[-1]})",
            {
                "x": f"PC 1 ({100 * ratio[0]:.1f}% of variance, L2 distance)",
                "y": f"PC 2 ({100 * ratio[1]:.1f}% of variance, L2 distance)",
            },
            points,
            trajectories=trajectories,
            epochs=epochs,
            explained_variance_ratio=ratio,
        )

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return surface_summary(record)

    def figures(self, records: Mapping[PieceKey, Mapping[str, Any]], epoch: int | None) -> Figures:
        out: Figures = []
        for rec in records.values():
            out.append(("trajectory", figures.surface_figure(rec, kind="contour")))
            out.append(("trajectory3d", figures.surface_figure(rec, kind="surface3d")))
        return out
