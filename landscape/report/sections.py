"""The sections of a run's report: which figures a summary gets, with their headings and captions.

Works on the plain ``summary.json`` dict only, so a report can be rebuilt from a copied summary
without the run, the models or torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from landscape.report import figures

#: Columns of the flatness table: ``(row key, heading)``.
TABLE_COLUMNS = [
    ("member", "member"),
    ("lambda_max", "\u03bb max"),
    ("lambda_min", "\u03bb min"),
    ("trace", "trace"),
    ("trace_stderr", "trace s.e."),
    ("sharpness_average", "adaptive sharpness (avg)"),
    ("sharpness_worst", "adaptive m-sharpness (worst)"),
    ("sharpness_worst_full", "adaptive sharpness (worst, whole subset)"),
    ("sharpness_plateaued", "ascent plateaued"),
    ("train_loss", "train loss (subset)"),
    ("test_acc", "test accuracy"),
]


def _per_member(records: Mapping[str, Any], tag: str, analysis: str) -> dict[str, Any]:
    """``{member: record}`` of one analysis at one epoch (keys ``tag/member/analysis``)."""
    return {
        k.split("/")[1]: r
        for k, r in records.items()
        if k.startswith(tag) and k.endswith(f"/{analysis}")
    }


def build_sections(
    summary: Mapping[str, Any],
) -> list[tuple[str, str, list[tuple[str, go.Figure]]]]:
    """Report sections ``(heading, text, [(file stem, figure), ...])`` from a summary.

    ``summary`` is the plain dict of ``summary.json`` (``landscape.pipeline.summary.build_summary``):
    per-epoch flatness rows and every stored record, keyed ``tag/member/analysis``.
    """
    records = summary["records"]
    sections: list[tuple[str, str, list[tuple[str, go.Figure]]]] = []
    for epoch in summary["epochs"]:
        tag = f"epoch_{epoch:04d}"
        rows = summary["flatness"][str(epoch)]
        figs: list[tuple[str, go.Figure]] = [
            (f"flatness_{tag}", figures.flatness_table(rows, TABLE_COLUMNS))
        ]
        spectra = _per_member(records, tag, "eigen")
        if spectra:
            figs.append((f"spectrum_{tag}", figures.spectrum_figure(spectra)))
        dens = _per_member(records, tag, "density")
        if dens:
            figs.append((f"density_{tag}", figures.density_figure(dens)))
        layers = _per_member(records, tag, "layers")
        if layers:
            figs.append((f"layers_{tag}", figures.layers_figure(layers)))
        sharp = _per_member(records, tag, "sharpness")
        if sharp:
            figs.append((f"sharpness_{tag}", figures.sharpness_figure(sharp)))
        sections.append(
            (
                f"Curvature at epoch {epoch}",
                "Extreme Hessian eigenvalues (with certified error bars), trace (Hutch++) and "
                "spectral density (stochastic Lanczos quadrature) of the mean training loss; "
                "adaptive sharpness (Andriushchenko et al. 2023) as the loss increase in an L2 "
                "ball scaled by |w|, BatchNorm statistics fixed: worst case by Auto-PGD over "
                "groups of m samples (m-sharpness) and over the whole subset, average case over "
                "antithetic Gaussian pairs. Headline values are at each grid's largest radius.",
                figs,
            )
        )
        curves = [r for k, r in records.items() if k.startswith(f"{tag}/interp/")]
        if curves:
            sections.append(
                (
                    f"Interpolation at epoch {epoch}",
                    "Loss and accuracy on straight lines between members; the barrier is the "
                    "largest rise of the loss above the chord between its two ends, "
                    "max over alpha of L(alpha) - ((1 - alpha) L(0) + alpha L(1)).",
                    [(f"interp_{tag}", figures.curves_figure(curves))],
                )
            )
        planes = [r for k, r in records.items() if k.startswith(f"{tag}/plane/")]
        for rec in planes:
            sections.append(
                (
                    f"Plane at epoch {epoch}",
                    rec.get("kind", ""),
                    [
                        (f"plane_{tag}", figures.surface_figure(rec, kind="contour")),
                        (f"plane3d_{tag}", figures.surface_figure(rec, kind="surface3d")),
                    ],
                )
            )
        randoms = [
            (k, r) for k, r in records.items() if k.startswith(tag) and k.endswith("/surface")
        ]
        if randoms:
            sections.append(
                (
                    f"Random 2D surfaces at epoch {epoch}",
                    "Filter-normalised Gaussian directions (Li et al. 2018), biases and "
                    "BatchNorm parameters fixed; the same seed for every member.",
                    [
                        (f"surface_{tag}_{k.split('/')[1]}", figures.surface_figure(r))
                        for k, r in randoms
                    ],
                )
            )
    tracking = summary.get("tracking") or {}
    if tracking.get("members"):
        sections.append(
            (
                "Curvature during training",
                "Tracked by okdph during training (track.* settings, run.json 'tracking'): the "
                "top eigenvalue of the Hessian of the mean cross-entropy on a fixed training "
                "subset, with certified error bars, against the full-batch stability threshold "
                "of the SGD that trains each student (2(1 + momentum)/lr minus weight decay; "
                "a reference line, not a prediction for minibatch SGD). Members no optimiser "
                "trains (hybrid, averages) have no threshold.",
                [("tracking", figures.tracking_figure(tracking))],
            )
        )
    for key, rec in records.items():
        if key.startswith("trajectory/"):
            sections.append(
                (
                    "Training trajectories",
                    "Surface on the plane of the first two principal components of the "
                    "students' checkpoints (computed through their Gram matrix), centred on the "
                    "final hybrid when there is one; trajectories projected onto it.",
                    [
                        ("trajectory", figures.surface_figure(rec, kind="contour")),
                        ("trajectory3d", figures.surface_figure(rec, kind="surface3d")),
                    ],
                )
            )
    return sections
