"""``landscape trajectories``: several runs' training paths on one PCA plane, the loss drawn on it.

The OKDPH paper's evidence of flatter minima is a figure: loss contours on a PCA plane fitted to
the students' trajectories of several methods. Here one plane is fitted (through the Gram
matrix) to the checkpoints of every trained member of every run given, centred on their mean;
the training and test loss are evaluated at every grid point as a true 2D slice of the loss
(BatchNorm per the policy at each point, as every surface of ``landscape analyze``), and every
run's path is projected onto it. The explained variance of the two axes and each checkpoint's
distance from the plane say how much of the paths the picture shows.

The reference code's figure is *stitched* instead: each grid point is evaluated at the nearest
checkpoint plus offsets along the two directions, with that checkpoint's BatchNorm buffers, so
neighbouring points can belong to different networks; this one is a single slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from landscape.core.errors import LandscapeError
from landscape.core.io import atomic_write_json
from landscape.geometry.subspace import pca_trajectory
from landscape.geometry.surface import span_coordinates
from landscape.geometry.weights import parameter_names
from landscape.measures.surfaces import evaluate_surface, surface_record
from landscape.pipeline.context import AnalyzeSettings, Context
from landscape.pipeline.okdph_adapter import read_study
from landscape.pipeline.runs import Run, open_run
from landscape.report import figures
from landscape.report.html import HtmlBlock, export_static, write_report


@dataclass(frozen=True)
class MemberPath:
    """One member's path: its run, method, member name and checkpoint epochs."""

    run: str
    method: str
    member: str
    epochs: tuple[int, ...]


def expand(paths: Sequence[Path]) -> list[Path]:
    """Run directories named, a study directory standing for its runs."""
    out: list[Path] = []
    for p in paths:
        study = read_study(p) if Path(p).is_dir() else None
        out += [Path(p) / r["name"] for r in study["runs"]] if study else [Path(p)]
    return out


def _subsample(epochs: list[int], most: int) -> list[int]:
    if len(epochs) <= most:
        return epochs
    pick = np.unique(np.linspace(0, len(epochs) - 1, most).round().astype(int))
    return [epochs[i] for i in pick]


def joint_trajectories(
    paths: Sequence[str | Path],
    settings: AnalyzeSettings,
    *,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The joint PCA plane of the runs' trained members, the loss on it (train and test), and
    every path's projection; JSON-ready (see the module docstring)."""
    runs: list[Run] = [open_run(p) for p in expand([Path(p) for p in paths])]
    if not runs:
        raise LandscapeError("no runs given")
    first = runs[0]
    for run in runs[1:]:
        if run.arch != first.arch or run.data != first.data:
            raise LandscapeError(
                f"{first.path.name} and {run.path.name} differ in architecture or data; one "
                "plane needs networks of one architecture trained on one dataset"
            )
    contexts = [Context(run, settings, show_progress) for run in runs]
    template = contexts[0].template(first.networks[0])
    names = parameter_names(template)
    rows, owners, epochs_of_rows = [], [], []
    paths_out: list[MemberPath] = []
    for run, ctx in zip(runs, contexts, strict=True):
        epochs = _subsample([c.epoch for c in run.checkpoints], settings.max_trajectory)
        for member in run.networks:
            if run.roles.get(member) != "network" or not all(
                member in run.checkpoint(e).members for e in epochs
            ):
                continue
            for e in epochs:
                rows.append({n: ctx.state(e, member)[n] for n in names})
                owners.append(len(paths_out))
                epochs_of_rows.append(e)
            paths_out.append(MemberPath(run.path.name, run.method or "?", member, tuple(epochs)))
    if len(rows) < 3:
        raise LandscapeError("a joint plane needs at least three checkpoints of trained members")
    pca = pca_trajectory(rows, names, k=2, origin="mean")
    coords = np.asarray(pca.coordinates)
    off_plane = []
    for row, xy in zip(rows, coords, strict=True):
        d2 = sum(float(((row[n].double() - pca.origin[n].double()) ** 2).sum()) for n in names)
        off_plane.append(math.sqrt(max(0.0, d2 - float(xy @ xy))))
    pad = 0.15 * (np.ptp(coords, axis=0) + 1e-12)
    xs = span_coordinates(coords[:, 0].min() - pad[0], coords[:, 0].max() + pad[0], settings.grid)
    ys = span_coordinates(coords[:, 1].min() - pad[1], coords[:, 1].max() + pad[1], settings.grid)
    # The centre's buffers (BatchNorm statistics) are recomputed at every point under the policy.
    centre = {**contexts[0].state(first.checkpoints[-1].epoch, first.networks[0]), **pca.origin}
    ctx = contexts[0]
    result = evaluate_surface(ctx, template, centre, pca, [xs, ys], None)
    ratio = [float(v) for v in pca.explained_variance_ratio]
    trajectories = {
        f"{p.run}/{p.member}": coords[[i for i, o in enumerate(owners) if o == k]].tolist()
        for k, p in enumerate(paths_out)
    }
    record = surface_record(
        result,
        f"Joint PCA plane of {len(paths_out)} paths from {len(runs)} runs",
        {
            "x": f"PC 1 ({100 * ratio[0]:.1f}% of variance, L2 distance)",
            "y": f"PC 2 ({100 * ratio[1]:.1f}% of variance, L2 distance)",
        },
        {name: path[-1] for name, path in trajectories.items()},
        trajectories=trajectories,
    )
    test = evaluate_surface(ctx, template, centre, pca, [xs, ys], None, split="test")
    record["test"] = {"loss": test.loss.T.tolist(), "accuracy": test.accuracy.T.tolist()}
    return {
        "record": record,
        "paths": [p.__dict__ for p in paths_out],
        "explained_variance_ratio": ratio,
        "checkpoints": [
            {
                "run": paths_out[o].run,
                "member": paths_out[o].member,
                "epoch": epoch,
                "x": float(xy[0]),
                "y": float(xy[1]),
                "off_plane": d,
            }
            for o, epoch, xy, d in zip(owners, epochs_of_rows, coords, off_plane, strict=True)
        ],
        "settings": settings.to_dict(),
        "runs": [str(r.path) for r in runs],
    }


def write_trajectories(
    result: dict[str, Any],
    out: Path,
    self_contained: bool = False,
    formats: Sequence[str] = (),
) -> tuple[Path, str | None]:
    """trajectories.json, report.html and, for ``formats`` (png, svg, pdf), figures/ in ``out``;
    returns the report's path and a message when static export is unavailable."""
    atomic_write_json(out / "trajectories.json", result)
    record = result["record"]
    methods = sorted({p["method"] for p in result["paths"]})
    panels = []
    for method in methods:
        keep = {f"{p['run']}/{p['member']}" for p in result["paths"] if p["method"] == method}
        panel = {
            **record,
            "title": f"{method}",
            "trajectories": {k: v for k, v in record["trajectories"].items() if k in keep},
            "points": {k: v for k, v in record["points"].items() if k in keep},
        }
        panels.append(figures.surface_figure(panel, kind="contour"))
    distances = np.asarray([c["off_plane"] for c in result["checkpoints"]])
    ratio = result["explained_variance_ratio"]
    note = HtmlBlock(
        f"<p>Explained variance: PC 1 {ratio[0]:.1%}, PC 2 {ratio[1]:.1%} (together {ratio[0] + ratio[1]:.1%}). Distance of the "
        f"checkpoints from the plane (L2): median {float(np.median(distances)):.3g}, largest {float(distances.max()):.3g}.</p>"
    )
    sections = [
        (
            "The joint plane",
            "One PCA plane fitted to every trained member's checkpoints (centred on their mean); "
            "training loss as one 2D slice, BatchNorm recalibrated at each point; every path "
            "projected onto it.",
            [note, figures.surface_figure(record, kind="contour")],
        ),
        ("Per method", "The same plane and loss; each panel shows one method's paths.", panels),
        (
            "Test loss",
            "The same plane on the test subset.",
            [figures.surface_figure(record, split="test")],
        ),
    ]
    report = write_report(
        out / "report.html",
        "Training trajectories on a joint PCA plane",
        sections,
        {"runs": ", ".join(result["runs"]), **result["settings"]},
        inline_plotlyjs=self_contained,
        command="landscape trajectories",
    )
    drawn = {"joint_plane": sections[0][2][1], "joint_plane_test": sections[2][2][0]}
    drawn.update({f"joint_plane_{m}": fig for m, fig in zip(methods, panels, strict=True)})
    _, message = export_static(drawn, out / "figures", formats)
    return report, message
