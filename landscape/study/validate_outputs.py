"""What ``landscape validate`` reads and writes: the study's analysed runs in, validate.json, a
tidy validate.csv and an offline validate.html out (the statistics: :mod:`.validate`), and with
``--declare`` the declaration of the study that follows."""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.core.errors import LandscapeError
from landscape.core.io import atomic_write_bytes
from landscape.core.records import json_safe
from landscape.measures.registry import measures
from landscape.report.figures import PALETTE
from landscape.report.html import HtmlBlock, export_static, write_report
from landscape.study import validate as v
from landscape.study.collect import RunRecord, load_run, study_runs

CSV_COLUMNS = ("measure", "target", "statistic", "axis", "value")


def load_study(path: Path) -> tuple[dict[str, Any], list[RunRecord]]:
    """study.json and every analysed run of the study directory ``path``."""
    study, listed = study_runs(path)
    if study is None:
        raise LandscapeError(
            f"{path} is not a study directory (it has no study.json); landscape validate needs "
            "a study from okdph sweep"
        )
    return study, [load_run(p, label) for p, label in listed]


def validate_study(
    path: Path,
    *,
    max_train_error: float = 0.01,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Read the study at ``path`` and validate every measure its analysis holds
    (:func:`landscape.study.validate.validate_table`), with the study's declared criterion."""
    study, records = load_study(path)
    axes = v.study_axes(study)
    table = v.build_table(study, records)
    v.check_design(table)  # refuse before anything else is said about the runs
    v.check_records(records, axes)
    result = v.validate_table(
        table,
        v.validation_fields(),
        criterion=v.Criterion.from_study(study),
        max_train_error=max_train_error,
        n_resamples=n_resamples,
        seed=seed,
    )
    return {
        "study": str(path),
        **result,
        "settings": records[0].settings,
        "definitions": records[0].definitions,
    }


# --------------------------------------------------------------------------------------------
# the declaration of a study that follows (okdph sweep --declare)

#: The primary family's size limit: at 8 seeds the smallest two-sided sign-flip p is 2/256, so
#: Holm over more than 6 contrasts could never reach 0.05.
MAX_PRIMARY_CONTRASTS = 6


def declaration(
    result: Mapping[str, Any],
    validate_json: Path,
    baselines: Sequence[str],
    max_contrasts: int = MAX_PRIMARY_CONTRASTS,
    always: Sequence[str] = ("lambda_max",),
) -> dict[str, Any]:
    """What a study that follows this validation declares before it trains (``okdph sweep
    --declare``): as primary measures, the validated ones in the validation's ranking, as many as
    fit ``max_contrasts`` contrasts against ``baselines`` (baselines of the fit analysis, such as
    the weight norm, are never primary: they are not flatness); the analyses that compute them
    and those in ``always`` (lambda_max, for continuity); and the provenance: the sha256 of
    ``validate_json``, so the declaration names the exact output it came from."""
    if not baselines:
        raise LandscapeError("--baselines names no method to contrast the reference with")
    validated = [
        m
        for m in result["ranking"]
        if result["verdicts"][m]["validates"] and not result["measures"][m]["baseline"]
    ]
    room = max(0, max_contrasts // len(baselines))
    primary = validated[:room]
    owners = {f.name: m.name for m in measures().values() for f in m.fields}
    needed = ["fit"] + [owners[name] for name in (*primary, *always) if name in owners]
    analyses = [m for m in measures() if m in needed]  # registry order, each once
    digest = hashlib.sha256(validate_json.read_bytes()).hexdigest()
    left_out = validated[room:]
    rule = (
        f"the measures that validated against {result['criterion']['target']} "
        f"({result['criterion']['text']}), in the validation's ranking, as many as fit "
        f"{max_contrasts} primary contrasts against {len(baselines)} baseline(s)"
    )
    return {
        "primary": {"measures": primary, "baselines": list(baselines)},
        "analyses": ",".join(analyses),
        "provenance": {
            "validation": str(validate_json),
            "sha256": digest,
            "study": result.get("study"),
            "rule": rule,
            "validated": validated,
            "left_out_for_size": left_out,
            "none_validated": not validated,
        },
    }


# --------------------------------------------------------------------------------------------
# validate.csv


def tidy_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per measure, target and statistic (``axis`` filled for per-axis statistics;
    ``target`` empty for the measure's own noise ratio)."""
    rows: list[dict[str, Any]] = []

    def add(measure: str, target: str, statistic: str, value: Any, axis: str = "") -> None:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float) and not math.isfinite(value):
            value = ""
        rows.append(
            {"measure": measure, "target": target, "statistic": statistic, "axis": axis,
             "value": value}
        )  # fmt: skip

    for measure, targets in result["results"].items():
        for target, r in targets.items():
            for subset, k in r["kendall"].items():
                for key in ("tau", "p", "ci_low", "ci_high", "n_runs", "n_configurations"):
                    add(measure, target, f"kendall_{subset}_{key}", k[key])
            g = r["granulated"]
            for axis, a in g["axes"].items():
                add(measure, target, "psi", a["psi"], axis)
                add(measure, target, "psi_groups", a["groups"], axis)
            add(measure, target, "Psi", g["Psi"])
            s = r["sign_error"]
            add(measure, target, "sign_error_mean", s["mean"])
            for q, value in s["quantiles"].items():
                add(measure, target, f"sign_error_q{q}", value)
            add(measure, target, "sign_error_worst", s["worst"])
            if s["worst_environment"]:
                env = s["worst_environment"]
                add(measure, target, "sign_error_worst_environment", "|".join(env["values"]),
                    env["axis"])  # fmt: skip
            add(measure, target, "sign_error_pairs", s["pairs"])
            add(measure, target, "sign_error_pairs_counted", s["pairs_counted"])
            add(measure, target, "noise_floor_s2", s["s2"])
            add(measure, target, "noise_floor", s["floor"])
        noise = result["noise"][measure]
        add(measure, "", "noise_ratio", noise["ratio"])
        verdict = result["verdicts"][measure]
        for key, check in verdict["checks"].items():
            add(measure, verdict["target"], f"criterion_{key}_margin", check["margin"])
        add(measure, verdict["target"], "validates", verdict["validates"])
    return rows


# --------------------------------------------------------------------------------------------
# validate.html


_STYLE = """<style>
table.validate { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; }
table.validate th, table.validate td { border: 1px solid #ddd; padding: 4px 8px; text-align: right;
  vertical-align: top; }
table.validate th:nth-child(-n+3), table.validate td:nth-child(-n+3) { text-align: left; }
table.validate tr.pass td { background: #eaf6ea; }
table.validate .fail { color: #b00020; }
</style>"""


def _num(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "\u2013"
    return format(x, spec)


def _interval(k: Mapping[str, Any]) -> str:
    tau = _num(k["tau"], "+.2f")
    ci = (
        f" [{_num(k['ci_low'], '+.2f')}, {_num(k['ci_high'], '+.2f')}]"
        if math.isfinite(k["ci_low"])
        else ""
    )
    return f"{tau}{ci}, n={k['n_runs']}"


def _check_cell(check: Mapping[str, Any]) -> str:
    if not check["estimable"]:
        return "<span class='fail'>n/a</span>"
    text = f"{check['value']:.3g} ({check['margin']:+.3g})"
    return text if check["passes"] else f"<span class='fail'>{text}</span>"


def ranking_table(result: Mapping[str, Any]) -> HtmlBlock:
    """The measures ranked by the criterion: each criterion's value and margin (positive: passes
    by that much), the taus, the sign-error's quantiles and worst case, the seed noise."""
    target = result["criterion"]["target"]
    head = (
        "<tr><th>rank</th><th>measure</th><th>verdict</th><th>Psi (margin)</th>"
        "<th>tau low (margin)</th><th>sign-error (margin)</th><th>tau, all runs [95%]</th>"
        "<th>tau, fitting runs [95%]</th><th>sign-error q0.5 / q0.9</th>"
        "<th>worst environment</th><th>pairs counted</th><th>noise ratio</th>"
        "<th>rescaling-invariant</th></tr>"
    )
    body = []
    for i, measure in enumerate(result["ranking"], 1):
        r = result["results"][measure][target]
        verdict = result["verdicts"][measure]
        s = r["sign_error"]
        worst = s["worst_environment"]
        where = (
            f"{_num(s['worst'], '.2f')} ({html.escape(worst['axis'])} "
            f"{html.escape(' vs '.join(worst['values']))})"
            if worst
            else "none clears 2x the floor"
        )
        kind = " (baseline)" if result["measures"][measure]["baseline"] else ""
        body.append(
            f"<tr class='{'pass' if verdict['validates'] else ''}'><td>{i}</td>"
            f"<td>{html.escape(measure)}{kind}</td>"
            f"<td>{'validates' if verdict['validates'] else 'does not validate'}</td>"
            f"<td>{_check_cell(verdict['checks']['psi'])}</td>"
            f"<td>{_check_cell(verdict['checks']['tau_ci_low'])}</td>"
            f"<td>{_check_cell(verdict['checks']['sign_error'])}</td>"
            f"<td>{_interval(r['kendall']['all'])}</td>"
            f"<td>{_interval(r['kendall']['fit'])}</td>"
            f"<td>{_num(s['quantiles']['0.5'], '.2f')} / {_num(s['quantiles']['0.9'], '.2f')}</td>"
            f"<td>{where}</td><td>{s['pairs_counted']} of {s['pairs']}</td>"
            f"<td>{_num(result['noise'][measure]['ratio'], '.2f')}</td>"
            f"<td>{'yes' if result['measures'][measure]['invariant'] else 'no'}</td></tr>"
        )
    absent = (
        f"<p>Not in the analysis: {html.escape(', '.join(result['absent']))}.</p>"
        if result["absent"]
        else ""
    )
    return HtmlBlock(
        f"{_STYLE}<p>{html.escape(result['criterion']['text'])}.</p>"
        f"<table class='validate'>{head}{''.join(body)}</table>{absent}"
    )


def floor_table(result: Mapping[str, Any]) -> HtmlBlock:
    """Per target: the pooled seed variance, its degrees of freedom, the noise floor of a
    difference of two configuration means, and the target's own noise ratio."""
    rows = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{_num(f['s2'])}</td>"
        f"<td>{f['df']}</td><td>{_num(f['floor'])} (n={f['seeds']})</td>"
        f"<td>{_num(result['noise'][t]['ratio'], '.2f')}</td></tr>"
        for t, f in result["noise_floor"].items()
    )
    return HtmlBlock(
        "<table class='validate'><tr><th>target</th><th>s2 (pooled seed "
        "variance)</th><th>df</th><th>floor sqrt(2 s2 / n)</th><th>noise ratio</th></tr>"
        f"{rows}</table>"
    )


def scatter_figure(result: Mapping[str, Any], axis: str, target: str) -> go.Figure:
    """Each measure against ``target`` over runs, coloured by the run's value on ``axis`` (log
    x for measures compared on the log scale); subplot titles carry tau over all runs."""
    measures = list(result["ranking"])
    cols = 3
    rows = max(1, math.ceil(len(measures) / cols))
    titles = [
        f"{m} (tau {_num(result['results'][m][target]['kendall']['all']['tau'], '+.2f')})"
        for m in measures
    ]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles or [""])
    levels = result["axes"][axis]
    for i, measure in enumerate(measures):
        row, col = i // cols + 1, i % cols + 1
        for j, level in enumerate(levels):
            runs = [
                r
                for r in result["runs"]
                if r["config"][axis] == level and measure in r["values"] and target in r["values"]
            ]
            fig.add_trace(
                go.Scatter(
                    x=[r["values"][measure] for r in runs],
                    y=[r["values"][target] for r in runs],
                    mode="markers",
                    marker={"color": PALETTE[j % len(PALETTE)], "size": 8, "opacity": 0.8},
                    name=f"{axis}={level}",
                    legendgroup=level,
                    showlegend=i == 0,
                    text=[f"{r['name']} (seed {r['seed']})" for r in runs],
                    hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>",
                ),
                row=row,
                col=col,
            )
        if result["measures"][measure]["log"]:
            fig.update_xaxes(type="log", row=row, col=col)
        fig.update_yaxes(title_text=target if col == 1 else None, row=row, col=col)
    fig.update_layout(
        title=f"Each measure against {target}, coloured by {axis} (points: runs)",
        template="plotly_white",
        height=300 * rows + 80,
    )
    return fig


def psi_figure(result: Mapping[str, Any]) -> go.Figure:
    """psi per axis as grouped bars per measure, with Psi (their mean), one row per target;
    the criterion's threshold dotted."""
    targets = list(result["targets"])
    fig = make_subplots(
        rows=len(targets), cols=1, subplot_titles=[f"against {t}" for t in targets] or [""]
    )
    measures = list(result["ranking"])
    series = [*result["axes"], "Psi (mean)"]
    for row, target in enumerate(targets, 1):
        for j, name in enumerate(series):
            values = []
            for m in measures:
                g = result["results"][m][target]["granulated"]
                values.append(g["Psi"] if name == "Psi (mean)" else g["axes"][name]["psi"])
            fig.add_trace(
                go.Bar(
                    x=measures,
                    y=[x if math.isfinite(x) else None for x in values],
                    name=name,
                    legendgroup=name,
                    showlegend=row == 1,
                    marker={"color": "#444444" if name == "Psi (mean)" else PALETTE[j % 8]},
                ),
                row=row,
                col=1,
            )
        fig.add_hline(y=result["criterion"]["psi"], line_dash="dot", row=row, col=1)
        fig.update_yaxes(range=[-1, 1], title_text="granulated tau", row=row, col=1)
    fig.update_layout(
        barmode="group",
        title="Granulated Kendall's tau per axis (psi) and their mean (Psi)",
        template="plotly_white",
        height=360 * max(1, len(targets)),
    )
    return fig


def sign_error_figure(result: Mapping[str, Any]) -> go.Figure:
    """Per measure, the sign-error of every environment (an axis and a pair of its values)
    against the criterion's target; hollow markers: environments below twice the floor."""
    target = result["criterion"]["target"]
    fig = go.Figure()
    axes = list(result["axes"])
    for j, axis in enumerate(axes):
        for qualifies in (True, False):
            xs, ys, text = [], [], []
            for m in result["ranking"]:
                for env in result["results"][m][target]["sign_error"]["environments"]:
                    if env["axis"] != axis or env["qualifies"] is not qualifies:
                        continue
                    if not math.isfinite(env["sign_error"]):
                        continue
                    xs.append(m)
                    ys.append(env["sign_error"])
                    text.append(
                        f"{axis}: {' vs '.join(env['values'])}, {env['pairs_counted']} pairs"
                    )
            if not xs:
                continue
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="markers",
                    name=f"{axis}" + ("" if qualifies else " (below 2x floor)"),
                    marker={
                        "color": PALETTE[j % len(PALETTE)],
                        "size": 10,
                        "symbol": "circle" if qualifies else "circle-open",
                    },
                    text=text,
                    hovertemplate="%{text}<br>sign-error %{y:.2f}<extra></extra>",
                )
            )
    fig.add_hline(y=result["criterion"]["sign_error"], line_dash="dot")
    fig.update_yaxes(range=[-0.05, 1.05], title_text=f"sign-error against {target}")
    fig.update_layout(
        title="Sign-error per environment (an axis and a pair of its values)",
        template="plotly_white",
        height=420,
    )
    return fig


def write_validate(
    result: Mapping[str, Any],
    out: Path,
    formats: Sequence[str] = ("html", "json"),
    self_contained: bool = False,
) -> tuple[list[Path], str | None]:
    """Write validate.json, validate.csv and (with "html") validate.html; static figures with
    png/svg/pdf. Returns the files and a note when static export was unavailable."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "validate.json"
    atomic_write_bytes(path, (json.dumps(json_safe(dict(result)), indent=2) + "\n").encode())
    written.append(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    writer.writerows(tidy_rows(result))
    atomic_write_bytes(out / "validate.csv", buf.getvalue().encode())
    written.append(out / "validate.csv")
    target = result["criterion"]["target"]
    figures: dict[str, go.Figure] = {
        f"scatter_{axis.replace('.', '_')}": scatter_figure(result, axis, target)
        for axis in result["axes"]
    }
    figures["psi"] = psi_figure(result)
    figures["sign_error"] = sign_error_figure(result)
    if "html" in formats:
        sections = [
            ("Which measures predict the gap", result["paragraph"], [ranking_table(result)]),
            (
                "Noise floor",
                "Seed-to-seed variance of each gap pooled over configurations; pairs of "
                "configurations whose gap differs by less than the floor are not counted in the "
                "sign-error.",
                [floor_table(result)],
            ),
            (
                "Measures against the gap",
                "One point per run (its students averaged).",
                [figures[k] for k in figures if k.startswith("scatter_")],
            ),
            (
                "Granulated tau",
                "Kendall's tau within groups of configurations that differ along one axis only "
                "(configuration means), averaged per axis (psi) and over axes (Psi).",
                [figures["psi"]],
            ),
            ("Sign-error", "", [figures["sign_error"]]),
        ]
        settings = {
            "study": result.get("study", ""),
            "criterion": result["criterion"]["text"],
            "runs": result["n_runs"],
            "configurations": result["n_configurations"],
            "axes": result["axes"],
            "bootstrap": result["bootstrap"],
            "max_train_error": result["max_train_error"],
            **result.get("settings", {}),
        }
        written.append(
            write_report(
                out / "validate.html",
                "Which flatness measure predicts generalisation",
                sections,
                settings,
                inline_plotlyjs=self_contained,
                command="landscape validate",
            )
        )
    exported, note = export_static(figures, out / "figures", formats)
    return written + exported, note
