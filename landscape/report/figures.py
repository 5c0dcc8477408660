"""Plotly figures of analysis results: curves, surfaces, spectra, densities and the flatness table.

Every function takes the plain records that ``landscape analyze`` stores (the ``to_dict()`` form of
the results plus labels), so figures can be rebuilt from the files alone, without recomputation.
Figures carry their axis units in the titles and their settings in ``layout.meta``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.report.html import HtmlTable

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
# Light tints of PALETTE, same order: a member averaged from student_i (ema_i, swa_i) takes the
# tint of student_i's colour, so the pair reads as related but stays distinguishable.
TINTS = ["#aec7e8", "#ff9896", "#98df8a", "#c5b0d5", "#ffbb78", "#9edae5", "#c49c94", "#f7b6d2"]
HYBRID_COLOUR = "#111111"
ENSEMBLE_COLOUR = "#7f7f7f"
_TEMPLATE = "plotly_white"
# Point labels on the dark end of Viridis (where members sit, at the minima): light text with a
# dark outline reads on both ends of the colour scale.
_LABEL_FONT = {"color": "white", "size": 12, "shadow": "1px 1px 2px black, -1px -1px 2px black"}


def member_colour(member: str, members: Sequence[str] = ()) -> str:
    """The colour of ``member`` in every figure, decided by its name alone so that it is the
    same in every figure and every run: ``student_<i>`` takes ``PALETTE[i]``, another name
    ending in ``_<i>`` (an average of student i) the tint of that colour, the hybrid black, the
    ensemble grey. Names of other forms (and ``run/member`` labels of several runs, which need
    colours apart from each other) take their place among ``members``."""
    if member in ("hybrid", "barycentre"):
        return HYBRID_COLOUR
    if member == "ensemble":
        return ENSEMBLE_COLOUR
    prefix, _, index = member.rpartition("_")
    if "/" not in member and prefix and index.isdigit():
        colours = PALETTE if prefix == "student" else TINTS
        return colours[int(index) % len(colours)]
    others = [m for m in members if m not in ("hybrid", "barycentre", "ensemble")]
    if member in others:
        return PALETTE[others.index(member) % len(PALETTE)]
    return TINTS[zlib.crc32(member.encode()) % len(TINTS)]


def _finite(values: Any) -> list[float | None]:
    """Lists for Plotly with NaN/inf as gaps (None) rather than silently drawn values."""
    arr = np.asarray(values, dtype=float)
    return [None if not math.isfinite(v) else float(v) for v in arr.ravel()]


def _grid(values: Any) -> list[list[float | None]]:
    arr = np.asarray(values, dtype=float)
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in arr]


def curves_figure(
    curves: Sequence[Mapping[str, Any]], title: str = "Linear interpolation"
) -> go.Figure:
    """Loss and accuracy along straight lines between members, train (solid) and test (dashed).

    Each curve record has ``label``, ``start``, ``end``, ``alphas`` and per split
    (``train``/``test``) ``loss`` and ``accuracy`` lists; ``barrier`` (per split) is shown in the
    legend. A curve is drawn in its start member's colour with markers in its end member's, so
    every pair is told apart and each member keeps the colour it has in every other figure;
    lines are slightly transparent so that curves lying on top of each other stay visible.
    """
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("loss", "accuracy"), horizontal_spacing=0.14
    )
    for i, curve in enumerate(curves):
        start, end = curve.get("start"), curve.get("end")
        line = member_colour(start) if start else PALETTE[i % len(PALETTE)]
        dots = member_colour(end) if end else line
        for split, dash, symbol in (("train", "solid", "circle"), ("test", "dash", "square")):
            if split not in curve:
                continue
            barrier = curve.get("barrier", {}).get(split)
            name = f"{curve['label']} ({split}"
            name += f", barrier {barrier:.3g})" if barrier is not None else ")"
            for col, metric in ((1, "loss"), (2, "accuracy")):
                fig.add_trace(
                    go.Scatter(
                        x=_finite(curve["alphas"]),
                        y=_finite(curve[split][metric]),
                        mode="lines+markers",
                        name=name,
                        legendgroup=name,
                        showlegend=col == 1,
                        opacity=0.85,
                        marker={"size": 6, "color": dots, "symbol": symbol},
                        line={"color": line, "dash": dash, "width": 2},
                    ),
                    row=1,
                    col=col,
                )
    for x in (0.0, 1.0):
        fig.add_vline(x=x, line={"color": "#bbbbbb", "width": 1})
    fig.update_xaxes(title_text="alpha: (1 - alpha) * start + alpha * end")
    fig.update_yaxes(title_text="mean cross-entropy", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (fraction)", row=1, col=2)
    fig.update_layout(
        title=title,
        template=_TEMPLATE,
        height=520,
        legend={"font": {"size": 10}, "orientation": "h", "yanchor": "top", "y": -0.2},
    )
    return fig


def _symbol(member: str, three_d: bool) -> str:
    if member in ("hybrid", "barycentre"):
        return "diamond" if three_d else "star"
    return "circle"


_LABEL_POSITIONS = (
    "top center",
    "bottom center",
    "middle right",
    "middle left",
    "top right",
    "bottom left",
    "top left",
    "bottom right",
)


def label_positions(
    points: Mapping[str, Sequence[float]], extent: Sequence[float] | None = None
) -> dict[str, str]:
    """Text positions for point labels: "top center", except that points closer than 8% of the
    plot's extent to an earlier one take the next free position, so their labels do not overlap
    (students fused onto their hybrid end at nearly one point).

    ``extent`` is the plot's width and height in data units (default: the points' own spread);
    it must be the plot's when it has one, or points that all end together, spread over a tiny
    range, never count as close."""
    names = list(points)
    xy = np.asarray([points[n][:2] for n in names], float).reshape(len(names), -1)
    if extent is None:
        spread = float(np.ptp(xy, axis=0).max()) if len(names) > 1 else 1.0
        extent = [spread] * xy.shape[1]
    # Distances in units of each axis's extent: on a plot whose axes differ in scale, what
    # overlaps on screen is what is close relative to each axis.
    scale = np.asarray([e if e > 0 else 1.0 for e in extent[: xy.shape[1]]], float)
    out: dict[str, str] = {}
    for i, name in enumerate(names):
        taken = {out[names[j]] for j in range(i) if np.linalg.norm((xy[i] - xy[j]) / scale) < 0.08}
        out[name] = next(p for p in (*_LABEL_POSITIONS, "top center") if p not in taken)
    return out


def _overlay_points(fig: go.Figure, record: Mapping[str, Any], z_of: Any = None) -> None:
    points = record.get("points", {})
    members = list(points) + [m for m in record.get("trajectories", {}) if m not in points]
    extent = [float(np.ptp(record[axis])) for axis in ("x", "y") if axis in record]
    positions = label_positions(points, extent if len(extent) == 2 else None)
    for name, xy in points.items():
        kwargs = dict(
            x=[xy[0]],
            y=[xy[1]],
            mode="markers+text",
            text=[name],
            textposition=positions[name],
            name=name,
            legendgroup=name,
            marker={
                "size": 11 if z_of is None else 7,
                "color": member_colour(name, members),
                "symbol": _symbol(name, three_d=z_of is not None),
                "line": {"color": "white", "width": 1},
            },
        )
        if z_of is None:
            fig.add_trace(go.Scatter(textfont=_LABEL_FONT, **kwargs))
        else:
            # No text in 3D: labels placed apart on the plane still meet once projected;
            # the legend (and hover) names the points.
            kwargs.update(mode="markers", hovertext=[name], textposition=None, text=None)
            fig.add_trace(go.Scatter3d(z=[z_of(xy)], **kwargs))
    for name, path in record.get("trajectories", {}).items():
        path = np.asarray(path, dtype=float)
        if z_of is None:
            fig.add_trace(
                go.Scatter(
                    x=path[:, 0],
                    y=path[:, 1],
                    mode="lines+markers",
                    name=f"{name} path",
                    legendgroup=name,
                    marker={"size": 4},
                    line={"color": member_colour(name, members)},
                )
            )
        else:
            fig.add_trace(
                go.Scatter3d(
                    x=path[:, 0],
                    y=path[:, 1],
                    z=[z_of(p) for p in path],
                    mode="lines",
                    name=f"{name} path",
                    legendgroup=name,
                    line={"color": member_colour(name, members), "width": 4},
                )
            )


def _short(title: str) -> str:
    """A 3D axis title: without its parenthesis ("PC 2 (18.8% of variance)" -> "PC 2"), and of
    a long one only its last two words ("L2 distance along axis 1" -> "axis 1"). 3D axis titles
    sit beside their axes' ends, where long ones run into each other and out of the scene."""
    short = title.split(" (")[0]
    return short if len(short) <= 12 else " ".join(short.split()[-2:])


def surface_figure(
    record: Mapping[str, Any],
    metric: str = "loss",
    split: str = "train",
    kind: str = "contour",
    clip: float | None = None,
) -> go.Figure:
    """A 2D loss (or accuracy) surface as a filled contour or a 3D surface, members drawn on it.

    The record has ``x``, ``y`` (coordinates), ``<split>`` with ``loss``/``accuracy`` grids of shape
    ``(len(y), len(x))``, optional ``points`` (member -> [x, y]) and ``trajectories``
    (member -> [[x, y], ...]), ``axes`` (axis titles with units) and ``title``.
    """
    x, y = np.asarray(record["x"], float), np.asarray(record["y"], float)
    z = np.asarray(record[split][metric], float)
    if clip is not None:
        z = np.where(np.isfinite(z), np.minimum(z, clip), z)
    axes = record.get("axes", {})
    label = "mean cross-entropy" if metric == "loss" else "accuracy (fraction)"
    title = f"{record.get('title', 'surface')}: {split} {metric}"
    if kind == "surface3d":
        fig = go.Figure(
            go.Surface(
                x=x, y=y, z=_grid(z), colorscale="Viridis", colorbar={"title": label}, name=metric
            )
        )

        finite = z[np.isfinite(z)]
        # Points and paths float a little above the surface: drawn at its height, the surface
        # hides half of each marker and all of its label.
        lift = 0.03 * float(np.ptp(finite)) if finite.size else 0.0

        def z_of(xy: Sequence[float]) -> float:
            i = int(np.argmin(np.abs(y - xy[1])))
            j = int(np.argmin(np.abs(x - xy[0])))
            return (float(z[i, j]) if math.isfinite(z[i, j]) else 0.0) + lift

        _overlay_points(fig, record, z_of)
        # Short titles on the axes (long ones overlap where the axes meet and are clipped at
        # the scene's edge); the full ones, with their units, in a line under the scene.
        x_title, y_title = axes.get("x", "x"), axes.get("y", "y")
        fig.update_layout(
            scene={
                "xaxis_title": _short(x_title),
                "yaxis_title": _short(y_title),
                "zaxis_title": metric,
                "camera": {"eye": {"x": 1.5, "y": 1.5, "z": 0.9}},
            },
            margin={"l": 10, "r": 10, "t": 60, "b": 110},
            annotations=[
                {
                    "text": f"x: {x_title}<br>y: {y_title}<br>z: {split} {label}",
                    "xref": "paper",
                    "yref": "paper",
                    "x": 0,
                    "y": -0.02,
                    "xanchor": "left",
                    "yanchor": "top",
                    "align": "left",
                    "showarrow": False,
                    "font": {"size": 11, "color": "#555555"},
                }
            ],
        )
        legend_y = -0.2
    else:
        fig = go.Figure(
            go.Contour(
                x=x,
                y=y,
                z=_grid(z),
                colorscale="Viridis",
                colorbar={"title": label},
                # Labelled levels, in white: dark text disappears on the dark end of Viridis.
                contours={
                    "coloring": "heatmap",
                    "showlabels": True,
                    "labelfont": {"color": "white", "size": 10},
                },
                line={"color": "rgba(255, 255, 255, 0.5)", "width": 1},
                connectgaps=False,
                name=metric,
            )
        )
        _overlay_points(fig, record)
        fig.update_xaxes(title_text=axes.get("x", "x"), constrain="domain")
        if record.get("equal_axes"):  # both axes in the same units: keep distances true
            fig.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain")
        fig.update_yaxes(title_text=axes.get("y", "y"))
        legend_y = -0.15
    fig.update_layout(
        title=title,
        template=_TEMPLATE,
        height=640,
        legend={"orientation": "h", "yanchor": "top", "y": legend_y, "x": 0},
    )
    return fig


def density_figure(densities: Mapping[str, Mapping[str, Any]]) -> go.Figure:
    """Hessian spectral densities (stochastic Lanczos quadrature) of several members, log scale.

    Each record has ``grid`` (eigenvalue axis), ``density`` and ``sigma`` (Gaussian broadening).
    """
    fig = go.Figure()
    names = list(densities)
    for name, rec in densities.items():
        dens = np.asarray(rec["density"], float)
        floor = max(float(np.nanmax(dens)) * 1e-10, 1e-300) if dens.size else 1e-300
        fig.add_trace(
            go.Scatter(
                x=_finite(rec["grid"]),
                y=_finite(np.maximum(dens, floor)),
                mode="lines",
                name=f"{name} (sigma {rec.get('sigma', float('nan')):.2g})",
                line={"color": member_colour(name, names)},
            )
        )
    # Powers of ten, not SI prefixes: "1u" or "100p" do not read as densities.
    fig.update_yaxes(type="log", title_text="density (log scale)", exponentformat="power")
    fig.update_xaxes(title_text="Hessian eigenvalue")
    fig.update_layout(title="Hessian spectral density", template=_TEMPLATE, height=420)
    return fig


def spectrum_figure(spectra: Mapping[str, Mapping[str, Any]]) -> go.Figure:
    """Top (and bottom) Hessian eigenvalues per member, with their certified bounds as error bars."""
    fig = go.Figure()
    names = list(spectra)
    for name, rec in spectra.items():
        values = np.asarray(rec["values"], float)
        fig.add_trace(
            go.Scatter(
                x=[name] * len(values),
                y=_finite(values),
                mode="markers",
                name=name,
                error_y={
                    "type": "data",
                    "array": _finite(
                        rec.get("error_bounds", rec.get("residuals", [0] * len(values)))
                    ),
                },
                marker={
                    "size": 9,
                    "color": member_colour(name, names),
                    "symbol": "line-ew-open",
                    "line": {"width": 3},
                },
            )
        )
    fig.update_xaxes(title_text="member")
    fig.update_yaxes(title_text="eigenvalue of the Hessian of the mean loss")
    fig.update_layout(
        title="Extreme Hessian eigenvalues", template=_TEMPLATE, height=420, showlegend=False
    )
    return fig


def sharpness_figure(records: Mapping[str, Mapping[str, Any]]) -> go.Figure:
    """Sharpness against the radius per member (left) and the worst-case ascent at the largest
    radius (right: the value had Auto-PGD stopped after each iteration).

    Each record is a ``sharpness`` piece: ``{"worst": [...], "worst_full": [...], "average":
    [...]}`` of :class:`landscape.geometry.sharpness.Sharpness` dicts.
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("sharpness against the radius", "worst-case ascent at the largest radius"),
    )
    names = list(records)
    styles = {"worst": "solid", "worst_full": "dot", "average": "dash"}
    labels = {
        "worst": "worst (m-sharpness)",
        "worst_full": "worst (whole subset)",
        "average": "average",
    }
    for name, rec in records.items():
        colour = member_colour(name, names)
        for kind, dash in styles.items():
            results = sorted(rec.get(kind) or [], key=lambda r: r["rho"])
            if not results:
                continue
            stderr = [r.get("stderr") for r in results] if kind == "average" else None
            fig.add_trace(
                go.Scatter(
                    x=[r["rho"] for r in results],
                    y=_finite([r["value"] for r in results]),
                    error_y={"type": "data", "array": _finite(stderr)} if stderr else None,
                    mode="lines+markers",
                    name=f"{name}: {labels[kind]}",
                    legendgroup=name,
                    line={"color": colour, "dash": dash},
                ),
                row=1,
                col=1,
            )
        worst = rec.get("worst") or []
        if worst:
            top = max(worst, key=lambda r: r["rho"])
            fig.add_trace(
                go.Scatter(
                    y=_finite(top.get("ascent", [])),
                    mode="lines",
                    name=f"{name}: ascent (plateaued: {top.get('plateaued')})",
                    legendgroup=name,
                    line={"color": colour},
                ),
                row=1,
                col=2,
            )
    fig.update_xaxes(type="log", title_text="radius rho (relative to |w|)", row=1, col=1)
    fig.update_yaxes(title_text="loss increase (nats)", row=1, col=1)
    fig.update_xaxes(title_text="Auto-PGD iteration", row=1, col=2)
    fig.update_yaxes(title_text="loss increase (nats)", row=1, col=2)
    fig.update_layout(title="Adaptive sharpness", template=_TEMPLATE, height=460)
    return fig


def layers_figure(records: Mapping[str, Mapping[str, Any]]) -> go.Figure:
    """Per-layer curvature: each Hessian block's top eigenvalue (left) and trace per parameter
    (right), bars grouped by member. Records are ``LayerCurvature`` dicts."""
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("top eigenvalue of the layer's block", "block trace / parameters"),
    )
    names = list(records)
    for name, rec in records.items():
        colour = member_colour(name, names)
        groups = [g or "(root)" for g in rec["groups"]]
        for col, key in ((1, "lambda_max"), (2, "trace_per_parameter")):
            fig.add_trace(
                go.Bar(
                    x=groups,
                    y=_finite(rec[key]),
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker={"color": colour},
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(title_text="eigenvalue", row=1, col=1)
    fig.update_yaxes(title_text="trace per parameter", row=1, col=2)
    fig.update_layout(title="Curvature per layer", template=_TEMPLATE, height=460, barmode="group")
    return fig


def tracking_figure(tracking: Mapping[str, Any]) -> go.Figure:
    """Top Hessian eigenvalue (left) and trace (right, when tracked) of each member against the
    epoch during training, with certified error bars and the optimiser's stability threshold."""
    series = tracking["members"]
    has_trace = any(v is not None for s in series.values() for v in s["trace"])
    fig = make_subplots(
        rows=1,
        cols=2 if has_trace else 1,
        subplot_titles=("\u03bb max during training", "trace") if has_trace else None,
    )
    members = list(series)
    # (value, its error bar) per panel, left to right
    panels = [("lambda_max", "lambda_max_bound")] + (
        [("trace", "trace_stderr")] if has_trace else []
    )
    for m, s in series.items():
        colour = member_colour(m, members)
        for col, (value, error) in enumerate(panels, 1):
            fig.add_trace(
                go.Scatter(
                    x=s["epoch"],
                    y=_finite(s[value]),
                    error_y={"type": "data", "array": _finite(s[error])},
                    mode="lines+markers",
                    name=m,
                    legendgroup=m,
                    showlegend=col == 1,
                    line={"color": colour},
                ),
                row=1,
                col=col,
            )
    trained = [s for s in series.values() if any(t is not None for t in s["threshold"])]
    if trained:
        fig.add_trace(
            go.Scatter(
                x=trained[0]["epoch"],
                y=_finite(trained[0]["threshold"]),
                mode="lines",
                name="SGD stability threshold",
                line={"color": "black", "dash": "dash", "shape": "hv"},
            ),
            row=1,
            col=1,
        )
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(template="plotly_white", height=420)
    return fig


def flatness_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]
) -> HtmlTable:
    """A table comparing members (students, hybrid, ensemble) on the flatness measures, as a
    plain HTML table (names as they are, every row shown).

    ``columns`` lists ``(key, header)``; missing values show as an en dash.
    """
    # Columns no member has (measures not run) would only add dashes.
    columns = [(k, h) for k, h in columns if any(r.get(k) is not None for r in rows)]
    return HtmlTable(
        [h for _, h in columns],
        [[r.get(key) for key, _ in columns] for r in rows],
        title="Flatness by member",
    )
