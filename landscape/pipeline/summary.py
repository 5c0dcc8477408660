"""From stored piece records to ``summary.json``, figure files, the HTML report and the stdout table.

Which figures a summary gets, and in which report sections, is decided in
:mod:`landscape.report.sections`; this module only writes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from landscape.pipeline.runs import Run
from landscape.pipeline.store import atomic_write_json
from landscape.report.html import ExportUnavailable, export_figures, write_report
from landscape.report.sections import build_sections
from okdph.run import RunDir, atomic_write_bytes


def _epoch_of(key: str) -> int | None:
    head = key.split("/", 1)[0]
    return int(head.removeprefix("epoch_")) if head.startswith("epoch_") else None


def flatness_rows(run: Run, epoch: int, records: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per member at ``epoch`` (plus the logit ensemble's accuracy when logged)."""
    tag = f"epoch_{epoch:04d}"
    metrics = run.checkpoint(epoch).metrics
    members = sorted(
        {
            k.split("/")[1]
            for k in records
            if k.startswith(tag + "/") and k.split("/")[1] not in ("interp", "plane")
        },
        key=lambda m: (run.roles.get(m) == "hybrid", m),
    )
    rows = []
    for m in members:
        row: dict[str, Any] = {"member": m, "role": run.roles.get(m, "network")}
        eig = records.get(f"{tag}/{m}/eigen")
        if eig:
            row["lambda_max"], row["lambda_min"] = max(eig["values"]), min(eig["values"])
            row["eigen_converged"] = all(eig["converged"])
            if eig.get("search"):
                row["eigen_search_added"] = eig["added"]
        fit = records.get(f"{tag}/{m}/fit")
        if fit:
            row["train_acc"], row["full_train_loss"] = (
                fit["train"]["accuracy"],
                fit["train"]["loss"],
            )
            row["test_loss"] = fit["test"]["loss"]
            row["gap_loss"], row["gap_accuracy"] = fit["gap_loss"], fit["gap_accuracy"]
            row["weight_norm"] = fit["weight_norm"]
        tr = records.get(f"{tag}/{m}/trace")
        if tr:
            row["trace"], row["trace_stderr"] = tr["value"], tr["stderr"]
        sh = records.get(f"{tag}/{m}/sharpness")
        if sh:
            row.update(sharpness_columns(sh))
        if f"{m}/test_acc" in metrics:
            row["test_acc"] = metrics[f"{m}/test_acc"]
        rows.append(row)
    if "ensemble/test_acc" in metrics:
        rows.append(
            {"member": "ensemble", "role": "ensemble", "test_acc": metrics["ensemble/test_acc"]}
        )
    return rows


def sharpness_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    """Headline sharpness (each grid's largest radius) and the per-radius values of a record.

    Keys: ``sharpness_worst`` (m-sharpness), ``sharpness_worst_full`` (whole subset),
    ``sharpness_average`` and its ``_stderr``; ``..._by_rho``: ``{rho: value}``;
    ``sharpness_plateaued``: every worst-case ascent had plateaued.
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


TRACKED = ("lambda_max", "lambda_max_bound", "threshold", "trace", "trace_stderr", "converged")


def tracking_series(run: Run) -> dict[str, Any]:
    """The curvature okdph tracked during training (``curv/<member>/<name>`` lines of
    metrics.jsonl), per member: ``epoch`` and each of :data:`TRACKED` (``None`` where a point
    lacks it); ``{}`` when the run tracked nothing."""
    if run.layout != "okdph":
        return {}
    points = [
        r
        for r in RunDir(run.path).read_metrics()  # skips torn and undecodable lines
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
    epochs = sorted({e for e in (_epoch_of(k) for k in records) if e is not None})
    curves = {}
    for key, rec in records.items():
        if "/interp/" in key:
            curves[key] = {
                "start": rec["start"],
                "end": rec["end"],
                "barrier_train": rec["barrier"]["train"],
                "barrier_test": rec["barrier"]["test"],
                "error_barrier_train": rec["error_barrier"]["train"],
                "error_barrier_test": rec["error_barrier"]["test"],
                "definition": rec["detail"]["train"]["definition"],
            }
    surfaces = {}
    for key, rec in records.items():
        if "x" in rec and "train" in rec:
            detail = rec.get("detail", {})
            surfaces[key] = {
                "title": rec["title"],
                "axes": rec["axes"],
                "grid": [len(rec["x"]), len(rec["y"])],
                "center_loss": detail.get("center_loss"),
                "n_nonfinite": detail.get("n_nonfinite"),
                "bn": detail.get("bn"),
                "directions": detail.get("directions", {}).get("kind"),
            }
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
        "curves": curves,
        "surfaces": surfaces,
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
    figures = {stem: fig for _, _, figs in sections for stem, fig in figs}
    report = None
    _remove_stale_figures(out / "figures", set(figures))
    if "json" in formats:
        for stem, fig in figures.items():
            atomic_write_bytes(out / "figures" / f"{stem}.json", fig.to_json().encode())
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
    message = None
    static = [f for f in formats if f in ("png", "svg", "pdf")]
    if static:
        try:
            export_figures(figures, out / "figures", static)
        except ExportUnavailable as err:
            message = str(err)
    return report, message


def _remove_stale_figures(folder: Path, current: set[str]) -> None:
    """Remove figure files of results the report no longer shows, so figures/ matches it."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.suffix in (".json", ".png", ".svg", ".pdf") and path.stem not in current:
            path.unlink(missing_ok=True)


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

    lines = [
        f"epoch {epoch}",
        f"{'member':<12} {'lambda_max':>11} {'trace':>11} {'sharpness':>10} {'test_acc':>9}",
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
