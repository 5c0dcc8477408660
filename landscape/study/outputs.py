"""What ``landscape compare`` writes: compare.json, a tidy compare.csv, and an offline report."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.core.io import atomic_write_bytes
from landscape.report.figures import PALETTE
from landscape.report.html import export_static, write_report
from landscape.study.collect import RunRecord, compare_fields, run_means


def tidy_rows(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per run, member and measure, for pandas."""
    rows = []
    for r in runs:
        for member, values in sorted(r.values.items()):
            for measure, value in sorted(values.items()):
                rows.append(
                    {
                        "run": r.name,
                        "method": r.method,
                        "seed": r.seed,
                        "epoch": r.epoch,
                        "member": member,
                        "kind": r.kinds.get(member, ""),
                        "measure": measure,
                        "value": value,
                    }
                )
    return rows


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def strip_figure(result: dict[str, Any], runs: Sequence[RunRecord]) -> go.Figure:
    """Each measure per method: one point per run (its students' mean), the mean and its 95%
    interval beside them (log axes for positive measures)."""
    fields = compare_fields()
    measures = [
        m
        for m, f in fields.items()
        if f.strip
        and any(m in result["methods"][meth].get("students", {}) for meth in result["methods"])
    ]
    cols = 3
    rows = max(1, math.ceil(len(measures) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=measures)
    methods = list(result["methods"])
    for i, measure in enumerate(measures):
        row, col = i // cols + 1, i % cols + 1
        for j, method in enumerate(methods):
            colour = PALETTE[j % len(PALETTE)]
            points = [run_means(r, "students").get(measure) for r in runs if r.method == method]
            points = [p for p in points if p is not None]
            fig.add_trace(
                go.Scatter(
                    x=[method] * len(points),
                    y=points,
                    mode="markers",
                    marker={"color": colour, "opacity": 0.6},
                    name=method,
                    legendgroup=method,
                    showlegend=i == 0,
                ),
                row=row,
                col=col,
            )
            d = result["methods"][method].get("students", {}).get(measure)
            if d and d["n"] > 1:
                fig.add_trace(
                    go.Scatter(
                        x=[method],
                        y=[d["mean"]],
                        mode="markers",
                        marker={
                            "color": colour,
                            "symbol": "line-ew-open",
                            "size": 18,
                            "line": {"width": 3},
                        },
                        error_y={
                            "type": "data",
                            "symmetric": False,
                            "array": [d["ci_high"] - d["mean"]],
                            "arrayminus": [d["mean"] - d["ci_low"]],
                        },
                        legendgroup=method,
                        showlegend=False,
                        hovertext=f"mean {d['mean']:.4g} [{d['ci_low']:.4g}, {d['ci_high']:.4g}], "
                        f"n={d['n']}",
                    ),
                    row=row,
                    col=col,
                )
        if fields[measure].log:
            fig.update_yaxes(type="log", row=row, col=col)
    fig.update_layout(
        title="Students' measures per method (points: runs; bars: 95% interval)",
        template="plotly_white",
        height=330 * rows,
    )
    return fig


def contrast_figure(result: dict[str, Any]) -> go.Figure:
    """Paired contrasts of the reference method against each other one, with 95% intervals:
    ratios of positive measures (left, log axis, 1 = equal) and differences (right, 0 = equal)."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("ratio (reference / other)", "difference (reference - other)"),
    )
    others = sorted({c["b"] for c in result["contrasts"]})
    for j, other in enumerate(others):
        for col, log in ((1, True), (2, False)):
            cs = [
                c
                for c in result["contrasts"]
                if c["b"] == other
                and c["log"] is log
                and c["estimate"] is not None
                and math.isfinite(c["ci_low"])
            ]
            if not cs:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[c["estimate"] for c in cs],
                    y=[c["measure"] for c in cs],
                    mode="markers",
                    name=f"vs {other}",
                    legendgroup=other,
                    showlegend=col == 1,
                    marker={"color": PALETTE[j % len(PALETTE)], "size": 9},
                    error_x={
                        "type": "data",
                        "symmetric": False,
                        "array": [c["ci_high"] - c["estimate"] for c in cs],
                        "arrayminus": [c["estimate"] - c["ci_low"] for c in cs],
                    },
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(type="log", row=1, col=1)
    fig.add_vline(x=1.0, line_dash="dot", row=1, col=1)
    fig.add_vline(x=0.0, line_dash="dot", row=1, col=2)
    fig.update_layout(
        title=f"{result['reference']} against each method, paired by seed",
        template="plotly_white",
        height=460,
    )
    return fig


def tracking_figure(result: dict[str, Any]) -> go.Figure:
    """The students' tracked top eigenvalue against the epoch per method: geometric mean over
    runs with its 95% band, and each method's SGD stability threshold (dashed)."""
    fig = go.Figure()
    for j, (method, band) in enumerate(sorted(result["tracking"].items())):
        colour = PALETTE[j % len(PALETTE)]
        x = band["epoch"]
        lows, highs = band["ci_low"], band["ci_high"]
        if all(v is not None and math.isfinite(v) for v in lows + highs):
            fig.add_trace(
                go.Scatter(
                    x=list(x) + list(x)[::-1],
                    y=list(highs) + list(lows)[::-1],
                    fill="toself",
                    fillcolor=colour,
                    opacity=0.2,
                    line={"width": 0},
                    legendgroup=method,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=band["mean"],
                mode="lines+markers",
                name=f"{method} (n={max(band['n'])})",
                legendgroup=method,
                line={"color": colour},
            )
        )
        if any(t is not None for t in band["threshold"]):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=band["threshold"],
                    mode="lines",
                    name=f"{method} threshold",
                    legendgroup=method,
                    line={"color": colour, "dash": "dash", "shape": "hv"},
                )
            )
    fig.update_yaxes(type="log", title_text="\u03bb max of the students")
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(template="plotly_white", height=440)
    return fig


def text_table(title: str, lines: Sequence[str]) -> go.Figure:
    fig = go.Figure(
        go.Table(
            header={"values": [title], "align": "left"},
            cells={"values": [list(lines) or ["(none)"]], "align": "left"},
        )
    )
    fig.update_layout(
        template="plotly_white", height=120 + 40 * max(1, len(lines)), margin={"t": 20, "b": 10}
    )
    return fig


def correlation_lines(result: dict[str, Any]) -> list[str]:
    out = []
    for c in result["correlations"]:
        ci = (
            ""
            if c["ci_low"] is None or not math.isfinite(c["ci_low"])
            else (f" [{c['ci_low']:.2f}, {c['ci_high']:.2f}]")
        )
        tau = "n/a" if not math.isfinite(c["tau"]) else f"{c['tau']:+.2f}{ci}"
        out.append(
            f"tau({c['measure']}, {c['target']}) = {tau}, n={c['n']} runs "
            f"(of {c['runs']}; train error <= {c['max_train_error']:g})"
        )
    return out


def write_compare(
    result: dict[str, Any],
    runs: Sequence[RunRecord],
    out: Path,
    formats: Sequence[str] = ("html", "json"),
    self_contained: bool = False,
) -> tuple[list[Path], str | None]:
    """Write compare.json, compare.csv and (with "html") compare.html; static figures with
    png/svg/pdf. Returns the files and a note when static export was unavailable."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "compare.json"
    atomic_write_bytes(path, (json.dumps(_json_safe(result), indent=2) + "\n").encode())
    written.append(path)
    buf = io.StringIO()
    rows = tidy_rows(runs)
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["run"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "compare.csv", buf.getvalue().encode())
    written.append(out / "compare.csv")
    figures = {
        "strip": strip_figure(result, runs),
        "contrasts": contrast_figure(result),
        "verdicts": text_table("verdicts", result["verdicts"]),
        "correlations": text_table(
            "flatness against generalisation (Kendall)", correlation_lines(result)
        ),
        "caveats": text_table("caveats", result["caveats"]),
    }
    if result.get("tracking"):
        figures["tracking"] = tracking_figure(result)
    if "html" in formats:
        sections = [
            (
                "Verdicts",
                "Paired by seed; primary family Holm-adjusted, the rest exploratory "
                "(Benjamini-Hochberg).",
                [figures["verdicts"], figures["caveats"]],
            ),
            ("Measures per method", "", [figures["strip"]]),
            ("Contrasts", "", [figures["contrasts"]]),
            ("Does flatness track generalisation?", "", [figures["correlations"]]),
        ]
        if "tracking" in figures:
            sections.append(
                (
                    "Curvature during training",
                    "Top Hessian eigenvalue of each method's students as tracked during "
                    "training (a run's students averaged, then runs summarised: geometric mean "
                    "and 95% t band over seeds), with the SGD stability threshold.",
                    [figures["tracking"]],
                )
            )
        written.append(
            write_report(
                out / "compare.html",
                "Flatness study",
                sections,
                {**result["settings"], "reference": result["reference"]},
                inline_plotlyjs=self_contained,
            )
        )
    exported, note = export_static(figures, out / "figures", formats)
    return written + exported, note
