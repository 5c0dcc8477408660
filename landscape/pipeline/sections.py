"""The sections of a run's report: which figures a summary gets, with their headings and captions.

Works on the plain ``summary.json`` dict only (every record is in it), so a report can be rebuilt
from a copied summary without the run or its models. Each registered measure draws its own
figures (``Measure.figures``) into the section it names; measures naming one section share it,
in registry order. The flatness table opens each epoch's curvature section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from landscape.measures.base import PieceKey, Scope, Section
from landscape.measures.registry import measures
from landscape.report import figures
from landscape.report.html import HtmlBlock

# (heading, text, [(file stem, figure or table)])
SectionFigures = tuple[str, str, list[tuple[str, go.Figure | HtmlBlock]]]

#: Tracked curvature is a record of training, not a measure of landscape analyze.
TRACKING_TEXT = (
    "Tracked by okdph during training (track.* settings, run.json 'tracking'): the "
    "top eigenvalue of the Hessian of the mean cross-entropy on a fixed training "
    "subset, with certified error bars, against the full-batch stability threshold "
    "of the SGD that trains each student (2(1 + momentum)/lr minus weight decay; "
    "a reference line, not a prediction for minibatch SGD). Members no optimiser "
    "trains (hybrid, averages) have no threshold."
)


def table_columns() -> list[tuple[str, str]]:
    """Columns of the flatness table, ``(row key, heading)``: the member, every registered
    measure's fields that have a heading, and the test accuracy logged in training."""
    columns = [("member", "member")]
    for measure in measures().values():
        if measure.scope is Scope.MEMBER:
            columns += [(f.name, f.heading) for f in measure.fields if f.heading]
    return [*columns, ("test_acc", "test accuracy")]


def invariance_note() -> str:
    """Which of the table's measures survive a reparametrisation that leaves the network's
    function unchanged (a layer scaled by c and the next by 1/c; a convolution scaled with its
    BatchNorm statistics, Dinh et al. 2017), from the registry's fields."""
    fields = [
        f
        for m in measures().values()
        if m.scope is Scope.MEMBER
        for f in m.fields
        if f.compare and f.correlate
    ]
    invariant = ", ".join(f.name for f in fields if f.invariant) or "none"
    not_invariant = ", ".join(f.name for f in fields if not f.invariant) or "none"
    return (
        "Reparametrisations that leave the function unchanged (a layer scaled by c and the next "
        f"by 1/c, Dinh et al. 2017) leave {invariant} unchanged and move {not_invariant}."
    )


def build_sections(summary: Mapping[str, Any]) -> list[SectionFigures]:
    """Report sections ``(heading, text, [(file stem, figure), ...])`` from a summary (the
    flatness tables are :class:`HtmlTable` blocks, not figures).

    ``summary`` is the plain dict of ``summary.json`` (``landscape.pipeline.summary.build_summary``):
    per-epoch flatness rows and every stored record, keyed by its results path.
    """
    registry = measures()
    by_measure: dict[str, dict[PieceKey, Any]] = {name: {} for name in registry}
    for path, rec in summary["records"].items():
        key = PieceKey.parse(path)
        if key.measure in by_measure:
            by_measure[key.measure][key] = rec
    sections: list[SectionFigures] = []

    def draw(epoch: int | None) -> None:
        """The sections of one epoch (``None``: the run-scope ones), in registry order."""
        order: dict[str, tuple[Section, list[tuple[str, go.Figure | HtmlBlock]]]] = {}
        if epoch is not None:
            rows = summary["flatness"][str(epoch)]
            table = figures.flatness_table(rows, table_columns())
            curvature = registry["eigen"].section if "eigen" in registry else None
            if curvature is not None:
                order[curvature.name] = (curvature, [(f"flatness_epoch_{epoch:04d}", table)])
        for name, measure in registry.items():
            if measure.section is None or (measure.scope is Scope.RUN) != (epoch is None):
                continue
            records = {k: r for k, r in by_measure[name].items() if k.epoch == epoch}
            if not records:
                continue
            drawn = measure.figures(records, epoch)
            if drawn:
                order.setdefault(measure.section.name, (measure.section, []))[1].extend(drawn)
        for section, figs in order.values():
            text = section.text
            if epoch is not None and section.name == "curvature":
                text = f"{text} {invariance_note()}"
            sections.append((section.heading.format(epoch=epoch), text, figs))

    for epoch in summary["epochs"]:
        draw(epoch)
    tracking = summary.get("tracking") or {}
    if tracking.get("members"):
        sections.append(
            (
                "Curvature during training",
                TRACKING_TEXT,
                [("tracking", figures.tracking_figure(tracking))],
            )
        )
    draw(None)
    return sections
