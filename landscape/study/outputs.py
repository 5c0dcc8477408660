"""What ``landscape compare`` writes: compare.json, a tidy compare.csv, and an offline report
(plots in Plotly; verdicts, caveats and correlations as HTML text and tables)."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.core.io import atomic_write_bytes
from landscape.report.figures import PALETTE
from landscape.report.html import HtmlBlock, HtmlTable, export_static, write_report
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


def value_range(values: Sequence[float | None], log: bool) -> list[float] | None:
    """An axis range holding every value, interval ends included, with a margin of 8% (Plotly's
    own range leaves error bars' caps outside the panel); on a log axis in powers of ten, as
    Plotly takes it, from the positive values. ``None`` (Plotly's choice) when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not finite:
        return None
    if log:
        finite = [math.log10(v) for v in finite]
    low, high = min(finite), max(finite)
    pad = 0.08 * (high - low) if high > low else (0.1 if log else 0.1 * abs(low) or 0.1)
    return [low - pad, high + pad]


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
        log = fields[measure].log
        ends = [run_means(r, "students").get(measure) for r in runs]
        for method in methods:
            d = result["methods"][method].get("students", {}).get(measure)
            if d and d["n"] > 1:
                ends += [d["ci_low"], d["ci_high"]]
        axis_range = value_range(ends, log)
        fig.update_yaxes(
            type="log" if log else "linear",
            range=axis_range,
            exponentformat="power",
            row=row,
            col=col,
        )
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
    for col, log in ((1, True), (2, False)):
        ends = [1.0 if log else 0.0]  # the line of no difference stays in view
        for c in result["contrasts"]:
            if c["log"] is log and c["estimate"] is not None and math.isfinite(c["ci_low"]):
                ends += [c["estimate"], c["ci_low"], c["ci_high"]]
        fig.update_xaxes(
            type="log" if log else "linear",
            range=value_range(ends, log),
            exponentformat="power",
            row=1,
            col=col,
        )
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
    fig.update_yaxes(type="log", title_text="\u03bb max of the students", exponentformat="power")
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(template="plotly_white", height=440)
    return fig


def text_list(lines: Sequence[str], empty: str) -> HtmlBlock:
    """Sentences (verdicts, caveats) as an HTML list; ``empty`` says why there are none."""
    if not lines:
        return HtmlBlock(f"<p>{html.escape(empty)}</p>")
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return HtmlBlock(f"<ul class='lines'>{items}</ul>")


def correlation_table(result: dict[str, Any]) -> HtmlBlock:
    """Kendall's tau of each flatness measure with each target over the runs that fit their
    training set, or the sentence saying why there is none."""
    rows = []
    for c in result["correlations"]:
        finite = c["ci_low"] is not None and math.isfinite(c["ci_low"])
        rows.append(
            [
                c["measure"],
                c["target"],
                f"{c['tau']:+.2f}" if math.isfinite(c["tau"]) else None,
                f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]" if finite else None,
                f"{c['n']} of {c['runs']}",
            ]
        )
    note = result.get("correlation_note")
    block = (
        HtmlTable(["measure", "target", "Kendall's tau", "95% interval", "runs used"], rows)
        if rows
        else None
    )
    text = f"<p>No correlation: {html.escape(note)}.</p>" if note else ""
    return HtmlBlock((block.markup if block else "") + text)


def _interval(d: dict[str, Any], digits: int = 4) -> str:
    if d["n"] > 1 and math.isfinite(d["ci_low"]):
        return f"{d['mean']:.{digits}f} [{d['ci_low']:.{digits}f}, {d['ci_high']:.{digits}f}]"
    return f"{d['mean']:.{digits}f}"


def _epoch_span(epochs: Sequence[int]) -> str:
    if not epochs:
        return "-"
    if list(epochs) == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])
    return ", ".join(str(e) for e in epochs)


def reported_accuracy_table(result: dict[str, Any]) -> HtmlBlock:
    """Each method's accuracy as the OKDPH reference code reports it, beside its students'
    last-epoch accuracy and the difference (means over runs, 95% intervals)."""
    rows = [
        [
            method,
            _interval(r["best_over_epochs_and_networks"]),
            _interval(r["students_last_epoch"]),
            _interval(r["selection"]),
            _epoch_span(r["epochs_tested"]),
            str(r["selection"]["n"]),
        ]
        for method, r in result.get("reported_accuracy", {}).items()
    ]
    if not rows:
        return HtmlBlock("<p>No run logged a test accuracy in metrics.jsonl.</p>")
    headings = [
        "method",
        "best over epochs and networks",
        "students, last epoch",
        "difference",
        "epochs tested",
        "runs",
    ]
    return HtmlTable(headings, rows)


#: Paired contrasts and intervals need two runs (seeds) of a method.
MIN_RUNS_PER_METHOD = 2


def too_few_runs(result: dict[str, Any]) -> str | None:
    """The sentence saying that no method has enough runs to compare (``None`` when one has)."""
    counts = Counter(r["method"] for r in result["runs"])
    if max(counts.values(), default=0) >= MIN_RUNS_PER_METHOD:
        return None
    have = ", ".join(f"{m}: {n}" for m, n in sorted(counts.items()))
    return (
        f"Comparison needs at least {MIN_RUNS_PER_METHOD} analysed runs (seeds) per method, and "
        f"no method here has that many (runs per method: {have}); compare a study, e.g. from "
        "`okdph sweep --seeds 0-2`, or list more runs."
    )


def write_compare(
    result: dict[str, Any],
    runs: Sequence[RunRecord],
    out: Path,
    formats: Sequence[str] = ("html", "json"),
    self_contained: bool = False,
) -> tuple[list[Path], str | None]:
    """Write compare.json, compare.csv and (with "html") compare.html; static figures with
    png/svg/pdf (the plots only: verdicts, caveats and correlations are text, in compare.json
    and the page). With fewer than two runs of every method the page says so in one sentence
    and nothing is plotted. Returns the files and a note when static export was unavailable."""
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
    sparse = too_few_runs(result)
    figures: dict[str, go.Figure] = {}
    if sparse is None:
        figures["strip"] = strip_figure(result, runs)
        figures["contrasts"] = contrast_figure(result)
        if result.get("tracking"):
            figures["tracking"] = tracking_figure(result)
    if "html" in formats:
        sections: list[tuple[str, str, list[go.Figure | HtmlBlock]]]
        if sparse is not None:  # one sentence, not empty panels on arbitrary axes
            sections = [("Not enough runs", sparse, [])]
        else:
            sections = [
                (
                    "Verdicts",
                    "Paired by seed; primary family Holm-adjusted, the rest exploratory "
                    "(Benjamini-Hochberg).",
                    [
                        text_list(result["verdicts"], "No contrast: no two methods share a seed."),
                        HtmlBlock("<h3>Caveats</h3>"),
                        text_list(result["caveats"], "None."),
                    ],
                ),
                ("Measures per method", "", [figures["strip"]]),
                ("Contrasts", "", [figures["contrasts"]]),
                (
                    "Accuracy as the reference code reports it",
                    "The OKDPH reference code reports the best test accuracy over all epochs and "
                    "all networks, the hybrid included: a selection on the test set. Beside it, "
                    "the students' accuracy at the last epoch (no selection), and the difference "
                    "per run. The best is taken over the epochs whose test split was evaluated "
                    "(eval_test_from), listed here.",
                    [reported_accuracy_table(result)],
                ),
                (
                    "Does flatness track generalisation?",
                    "Kendall's tau over the runs whose students fit their training set.",
                    [correlation_table(result)],
                ),
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
                command="landscape compare",
            )
        )
    exported, note = export_static(figures, out / "figures", formats)
    return written + exported, note
