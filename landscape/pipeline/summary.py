"""From stored piece records to ``summary.json``, figure files, the HTML report and the stdout table.

Each registered measure says what its records add to ``summary.json`` (``Measure.summarise``);
which figures a summary gets, and in which report sections, is decided in
:mod:`landscape.pipeline.sections`; this module only writes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from landscape.core.io import atomic_write_bytes, atomic_write_json
from landscape.measures.base import PieceKey, Scope
from landscape.measures.registry import measures
from landscape.pipeline.okdph_adapter import read_metrics
from landscape.pipeline.runs import Run
from landscape.pipeline.sections import build_sections
from landscape.report.html import HtmlTable, export_static, write_report


def _records_by_measure(
    records: Mapping[str, Any],
) -> dict[str, dict[PieceKey, Mapping[str, Any]]]:
    """Records of registered measures, grouped ``{measure: {key: record}}`` (keys of measures
    no longer installed are left out)."""
    known = measures()
    out: dict[str, dict[PieceKey, Mapping[str, Any]]] = {name: {} for name in known}
    for path, rec in records.items():
        key = PieceKey.parse(path)
        if key.measure in known:
            out[key.measure][key] = rec
    return out


def hessian_products(record: Mapping[str, Any]) -> int:
    """Hessian-vector products a record spent: its ``n_hvp`` (an eigen-solve's includes its
    search), or the sum over the results it holds one level down (``adaptive``: eigen + trace)."""
    own = record.get("n_hvp")
    if isinstance(own, int):
        return own
    if isinstance(own, list):  # per parameter group
        return sum(int(n) for n in own)
    return sum(
        int(v["n_hvp"])
        for v in record.values()
        if isinstance(v, Mapping) and isinstance(v.get("n_hvp"), int)
    )


def flatness_rows(run: Run, epoch: int, records: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per member at ``epoch``: every member-scope measure's summary fields and its
    ``<measure>_seconds`` (plus the logit ensemble's accuracy when logged)."""
    metrics = run.checkpoint(epoch).metrics
    grouped = _records_by_measure(records)
    per_member: dict[str, dict[str, Any]] = {}
    for name, measure in measures().items():
        if measure.scope is not Scope.MEMBER or measure.summary_group is not None:
            continue
        for key, rec in grouped[name].items():
            if key.epoch != epoch:
                continue
            row = per_member.setdefault(key.member, {})
            row.update(measure.summarise(rec))
            if isinstance(rec.get("compute_seconds"), (int, float)):
                row[f"{name}_seconds"] = rec["compute_seconds"]
            products = hessian_products(rec)
            if products:
                row[f"{name}_n_hvp"] = products
    members = sorted(per_member, key=lambda m: (run.roles.get(m) == "hybrid", m))
    rows = []
    for m in members:
        entry: dict[str, Any] = {"member": m, "role": run.roles.get(m, "network"), **per_member[m]}
        if f"{m}/test_acc" in metrics:
            entry["test_acc"] = metrics[f"{m}/test_acc"]
        elif "test_accuracy" in entry:  # no training log (state dicts): fit measured it alike
            entry["test_acc"] = entry["test_accuracy"]
        rows.append(entry)
    if "ensemble/test_acc" in metrics:
        rows.append(
            {"member": "ensemble", "role": "ensemble", "test_acc": metrics["ensemble/test_acc"]}
        )
    return rows


TRACKED = ("lambda_max", "lambda_max_bound", "threshold", "trace", "trace_stderr", "converged")


def tracking_series(run: Run) -> dict[str, Any]:
    """The curvature okdph tracked during training (``curv/<member>/<name>`` lines of
    metrics.jsonl), per member: ``epoch`` and each of :data:`TRACKED` (``None`` where a point
    lacks it); ``{}`` when the run tracked nothing."""
    if run.layout != "okdph":
        return {}
    points = [
        r
        for r in read_metrics(run.path)  # skips torn and undecodable lines
        if "curv/lr" in r and isinstance(r.get("epoch"), (int, float))
    ]
    members = sorted(
        {k.split("/")[1] for r in points for k in r if k.startswith("curv/") and k.count("/") == 2}
    )
    series = {}
    for m in members:
        rows = [r for r in points if f"curv/{m}/lambda_max" in r]
        series[m] = {
            "role": run.roles.get(m, "network"),
            "epoch": [r["epoch"] for r in rows],
            **{name: [r.get(f"curv/{m}/{name}") for r in rows] for name in TRACKED},
        }
    if not series:
        return {}
    return {"definition": run.info.get("tracking", {}), "members": series}


def build_summary(
    run: Run,
    settings: Mapping[str, Any],
    records: Mapping[str, Any],
    files: Mapping[str, str],
    computed: int,
) -> dict[str, Any]:
    """Every number of the analysis in one JSON-ready dict."""
    epochs = sorted({k.epoch for k in map(PieceKey.parse, records) if k.epoch is not None})
    groups: dict[str, dict[str, Any]] = {"curves": {}, "surfaces": {}}
    for name, by_key in _records_by_measure(records).items():
        measure = measures()[name]
        group = measure.summary_group or ("curves" if measure.scope is Scope.PAIR else None)
        if group is None:
            continue
        for key, rec in by_key.items():
            groups.setdefault(group, {})[key.path()] = measure.summarise(rec)
    return {
        "run": {
            "path": str(run.path),
            "layout": run.layout,
            "method": run.method,
            "arch": run.arch,
            "data": run.data,
            "members": run.roles,
        },
        "settings": dict(settings),
        "data": {
            "split": "train without augmentation (seeded subset); curves also on a test subset",
            "train_samples_requested": settings.get("samples"),
            "test_samples_requested": settings.get("test_samples"),
            "seed": settings.get("seed"),
        },
        "epochs": epochs,
        "flatness": {str(e): flatness_rows(run, e, records) for e in epochs},
        **groups,
        "tracking": tracking_series(run),
        "records": dict(records),
        "files": dict(files),
        "pieces": len(records),
        "computed_now": computed,
    }


def write_outputs(
    summary: dict[str, Any], out: Path, formats: Sequence[str], self_contained: bool = False
) -> tuple[Path | None, str | None]:
    """Write summary.json, figure files and report.html; returns the report path and a message
    when static export was asked for but is unavailable."""
    atomic_write_json(out / "summary.json", summary)
    sections = build_sections(summary)
    drawn = {stem: fig for _, _, figs in sections for stem, fig in figs}
    # Tables are HTML, not Plotly figures: their data file is a CSV, and they have no image.
    tables = {stem: t for stem, t in drawn.items() if isinstance(t, HtmlTable)}
    figures = {stem: f for stem, f in drawn.items() if isinstance(f, go.Figure)}
    report = None
    _remove_stale_figures(out / "figures", set(figures), set(tables))
    if "json" in formats:
        for stem, fig in figures.items():
            atomic_write_bytes(out / "figures" / f"{stem}.json", fig.to_json().encode())
        for stem, table in tables.items():
            atomic_write_bytes(out / "figures" / f"{stem}.csv", table.to_csv().encode())
    if "html" in formats:
        settings = {
            "run": summary["run"]["path"],
            "layout": summary["run"]["layout"],
            "method": summary["run"]["method"],
            "architecture": summary["run"]["arch"],
            "data": summary["run"]["data"],
            "run members": summary["run"]["members"],
            **summary["settings"],
            "members": ", ".join(summary["settings"]["members"]) or "all",
            **summary["data"],
        }
        title = f"Loss landscape of {Path(summary['run']['path']).name}"
        report = write_report(
            out / "report.html",
            title,
            [(h, t, [f for _, f in figs]) for h, t, figs in sections],
            settings,
            inline_plotlyjs=self_contained,
        )
    _, message = export_static(figures, out / "figures", formats)
    return report, message


def _remove_stale_figures(folder: Path, figures: set[str], tables: set[str]) -> None:
    """Remove figure files of results the report no longer shows (and images or JSON of what
    is now a table), so figures/ matches it."""
    if not folder.is_dir():
        return
    current = {f"{stem}{ext}" for stem in figures for ext in (".json", ".png", ".svg", ".pdf")}
    current |= {f"{stem}.csv" for stem in tables}
    for path in folder.iterdir():
        if path.suffix in (".json", ".csv", ".png", ".svg", ".pdf") and path.name not in current:
            path.unlink(missing_ok=True)


def costliest(summary: Mapping[str, Any], n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` pieces that took longest to compute, ``[(results path, seconds)]`` (pieces
    stored before timings were recorded have none and are left out)."""
    timed = [
        (path, float(rec["compute_seconds"]))
        for path, rec in summary["records"].items()
        if isinstance(rec, Mapping) and isinstance(rec.get("compute_seconds"), (int, float))
    ]
    return sorted(timed, key=lambda item: -item[1])[:n]


def stdout_table(summary: Mapping[str, Any]) -> str:
    """The short table printed at the end: member, lambda_max, trace, sharpness, test accuracy."""
    if not summary["epochs"]:
        return "no per-member results"
    epoch = summary["epochs"][-1]
    rows = summary["flatness"][str(epoch)]

    def fmt(v: Any, spec: str = ".4g") -> str:
        return (
            "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)
        )

    rho = max(summary["settings"].get("rho_average") or [float("nan")])
    sharp = f"sharp@{rho:g}"  # average-case adaptive sharpness at the largest radius
    lines = [
        f"epoch {epoch}",
        f"{'member':<12} {'lambda_max':>11} {'trace':>11} {sharp:>10} {'test_acc':>9}",
    ]
    for r in rows:
        lines.append(
            f"{r['member']:<12} {fmt(r.get('lambda_max')):>11} {fmt(r.get('trace')):>11} "
            f"{fmt(r.get('sharpness_average')):>10} {fmt(r.get('test_acc'), '.4f'):>9}"
        )
    for key, c in summary["curves"].items():
        if not key.startswith(f"epoch_{epoch:04d}/"):
            continue
        lines.append(
            f"barrier {c['start']} -> {c['end']}: loss train {fmt(c['barrier_train'])}, "
            f"test {fmt(c['barrier_test'])}; error test {fmt(c['error_barrier_test'], '.3f')}"
        )
    return "\n".join(lines)
