"""``simplex``: the loss over the 2-simplex of three students' weights.

OKDPH's hybrid is a Dirichlet-weighted point of its students' simplex; its premise is that the
loss is low over that whole region. On a grid of barycentric coordinates ``(a, b, c)``, ``a + b
+ c = 1``, the network ``a w_0 + b w_1 + c w_2`` is evaluated on the training subset, every
point (corners included) under the analysis' BatchNorm policy. The summary number is the
simplex's chord barrier: the largest rise of the loss above the plane through the three
corners' losses, ``max (L(a, b, c) - (a L_0 + b L_1 + c L_2))``, and likewise for the error;
its corners are the students' own losses and its edges the interpolation curves between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from torch import Tensor, nn

from landscape.core.progress import progress
from landscape.geometry.batchnorm import check_policy, running_stat_names
from landscape.geometry.evaluate import evaluator_for_policy
from landscape.geometry.weights import State, combine, parameter_names
from landscape.measures.base import (
    Field,
    Figures,
    Measure,
    MeasureContext,
    PieceKey,
    Scope,
    Section,
    Target,
    require,
    tag,
)

DEFINITION = (
    "simplex/1: loss and accuracy at a w_0 + b w_1 + c w_2 on a barycentric grid (n divisions "
    "per edge), every point under the BatchNorm policy; chord barrier max over the grid of "
    "f - (a f_0 + b f_1 + c f_2) for the loss and the error (1 - accuracy)"
)


@dataclass(frozen=True)
class SimplexSettings:
    simplex_grid: int = field(
        default=10, metadata={"help": "divisions of each edge of the students' simplex"}
    )

    def validate(self) -> None:
        require(
            self.simplex_grid >= 2, f"--simplex-grid must be at least 2, not {self.simplex_grid}"
        )


def barycentric_grid(divisions: int) -> np.ndarray:
    """Every ``(a, b, c)`` with ``(b, c) = (i, j) / divisions``, ``i + j <= divisions``,
    ``a = 1 - b - c``; corners first (``(1,0,0)``, ``(0,1,0)``, ``(0,0,1)``)."""
    points = [
        (i / divisions, j / divisions)
        for i in range(divisions + 1)
        for j in range(divisions + 1 - i)
    ]
    corners = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    rest = [p for p in points if p not in corners]
    bc = np.array(corners + rest)
    return np.column_stack([1.0 - bc.sum(axis=1), bc])


def simplex_barrier(weights: np.ndarray, values: np.ndarray) -> float:
    """``max (f - (a f_0 + b f_1 + c f_2))`` over the grid (corners are rows 0-2); NaN when a
    value is not finite."""
    if not np.all(np.isfinite(values)):
        return float("nan")
    return float(np.max(values - weights @ values[:3]))


def simplex_surface(
    model: nn.Module,
    states: Sequence[Mapping[str, Tensor]],
    data: list[tuple[Tensor, Tensor]],
    *,
    divisions: int = 10,
    bn: str = "recalibrate",
    bn_data: list[tuple[Tensor, Tensor]] | None = None,
    show_progress: bool = True,
    **engine: Any,
) -> dict[str, Any]:
    """Loss and accuracy over the simplex of three weight states (see the module docstring)."""
    check_policy(bn)
    ev = evaluator_for_policy(model, data, bn, bn_data, **engine)
    s0, s1, s2 = (ev.state(s) for s in states)
    names = parameter_names(ev.module)
    stats = [n for n in running_stat_names(ev.module) if s0[n].is_floating_point()]
    moving = names + stats if bn == "interpolate" else names
    d1 = {n: s1[n].double() - s0[n].double() for n in moving}
    d2 = {n: s2[n].double() - s0[n].double() for n in moving}
    weights = barycentric_grid(divisions)

    def point(k: int) -> tuple[State, bool]:
        _, b, c = weights[k]
        return combine(s0, [(float(b), d1), (float(c), d2)]), True

    bar = progress(total=len(weights), desc="simplex", enable=show_progress)
    try:
        loss, acc = ev.evaluate_points(range(len(weights)), point, bn, bar)
    finally:
        bar.close()
    return {
        "weights": weights.tolist(),
        "loss": loss.tolist(),
        "accuracy": acc.tolist(),
        "barrier": simplex_barrier(weights, loss),
        "error_barrier": simplex_barrier(weights, 1.0 - acc),
        "corner_loss": loss[:3].tolist(),
        "divisions": divisions,
        "bn": bn,
        "n_samples": ev.n_samples,
    }


class Simplex(Measure):
    """The loss over the simplex of three trained students (runs with three or more)."""

    name = "simplex"
    scope = Scope.PLANE
    settings = SimplexSettings
    definition = DEFINITION
    summary_group = "simplices"
    fields = (
        Field("simplex_barrier", "simplex barrier", compare=True, invariant=True, correlate=True),
    )
    section = Section(
        "simplex",
        "Simplex of three students at epoch {epoch}",
        "Training loss at a w_0 + b w_1 + c w_2 over the students' 2-simplex (BatchNorm per the "
        "analysis' policy at every point). The barrier is the largest rise above the plane "
        "through the corners' losses; OKDPH's hybrids are points of this simplex.",
    )

    def groups(self, networks: list[str], hybrids: list[str]) -> list[tuple[str, ...]] | None:
        return [tuple(networks[:3])] if len(networks) >= 3 else []

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        members = target.members
        result = simplex_surface(
            ctx.template(members[0]),
            [ctx.state(target.epoch, m) for m in members],
            ctx.data("train"),
            divisions=settings.simplex_grid,
            bn=ctx.settings.bn,
            bn_data=ctx.data("train"),
            device=ctx.device,
            show_progress=ctx.show,
        )
        return {"definition": self.definition, "members": list(members), **result}

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "members": record["members"],
            "barrier_train": record["barrier"],
            "error_barrier_train": record["error_barrier"],
        }

    def run_values(
        self, entries: Mapping[PieceKey, Mapping[str, Any]], kinds: Mapping[str, str]
    ) -> dict[str, dict[str, float]]:
        """Each corner student gets its simplex's barrier."""
        out: dict[str, dict[str, float]] = {}
        for key, entry in entries.items():
            value = entry.get("barrier_train")
            if isinstance(value, (int, float)) and np.isfinite(value):
                for member in key.members:
                    out.setdefault(member, {})["simplex_barrier"] = float(value)
        return out

    def figures(self, records: Mapping[PieceKey, Mapping[str, Any]], epoch: int | None) -> Figures:
        out: Figures = []
        for key, rec in records.items():
            w = np.asarray(rec["weights"])
            a, b, c = key.members
            fig = go.Figure(
                go.Scatterternary(
                    a=w[:, 0],
                    b=w[:, 1],
                    c=w[:, 2],
                    mode="markers",
                    marker={
                        "color": rec["loss"],
                        "colorscale": "Viridis",
                        "size": 9,
                        "colorbar": {"title": {"text": "mean cross-entropy"}},
                    },
                    hovertemplate="loss %{marker.color:.4g}<extra></extra>",
                )
            )
            fig.update_layout(
                title=f"Training loss over the simplex of {a}, {b}, {c} "
                f"(barrier {rec['barrier']:.3g})",
                ternary={"aaxis": {"title": a}, "baxis": {"title": b}, "caxis": {"title": c}},
                template="plotly_white",
                height=520,
            )
            out.append((f"simplex_{tag(epoch)}", fig))
        return out
