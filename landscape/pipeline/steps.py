"""The pieces of ``landscape analyze``: settings, shared context, and one function per analysis.

Every analysis runs on a fixed, seeded subset of the training split without augmentation (and a
subset of the test split for curves), the model in eval mode. The hybrid's BatchNorm statistics
belong to no trained network, so with ``bn="recalibrate"`` (default) they are recomputed on the
training subset before its curvature is measured. Every point of a curve or surface, its ends and
centre included, follows the same BatchNorm policy, so barriers and basins compare like with like
(each result also records the ends' or centre's loss with their own statistics).

Each ``*_record`` function computes one piece and returns a JSON-ready record; ``landscape.report.figures``
draws figures from these records alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.core.definitions import definition
from landscape.core.device import resolve_device
from landscape.core.distributed import rank_and_world
from landscape.core.errors import LandscapeError
from landscape.curvature.density import spectral_density
from landscape.curvature.eigenvalues import top_eigenvalues
from landscape.curvature.layers import layer_curvature
from landscape.curvature.trace import hessian_trace
from landscape.geometry.batchnorm import batchnorm_layers, recalibrate, running_stat_names
from landscape.geometry.directions import random_direction
from landscape.geometry.evaluate import evaluate
from landscape.geometry.interpolate import interpolate
from landscape.geometry.sharpness import sharpness
from landscape.geometry.subspace import pca_trajectory, plane_through
from landscape.geometry.surface import grid_coordinates, plane_grid, span_coordinates, surface
from landscape.geometry.weights import parameter_names
from landscape.pipeline.runs import Checkpoint, Run
from landscape.pipeline.store import file_digest

DEFAULT_ANALYSES = (
    "fit",
    "eigen",
    "trace",
    "density",
    "sharpness",
    "interp",
    "plane",
    "surface",
    "trajectory",
)
# Per-layer curvature costs an eigen-solve and a trace per parameter group: asked for by name
# (or --per-layer).
ANALYSES = (*DEFAULT_ANALYSES, "layers")


@dataclass
class AnalyzeSettings:
    """Every knob of ``landscape analyze`` (recorded in settings.json and every piece's hash)."""

    epochs: str = "last"  # "last", "all" or a comma-separated list of epochs
    members: tuple[str, ...] = ()  # empty: every member
    analyses: tuple[str, ...] = DEFAULT_ANALYSES
    samples: int = 512  # training samples (a seeded subset), also the BatchNorm calibration set
    test_samples: int = 512
    batch_size: int = 256
    grid: int = 21  # points per surface axis (odd)
    radius: float = 1.0  # random surfaces: half-width in filter-normalised units
    alphas: int = 31  # points on [-0.25, 1.25] for interpolation curves
    k: int = 5  # eigenvalues at each end of the spectrum
    tol: float = 1e-3
    # Failure probability of the search orthogonal to the returned eigenvectors that certifies
    # nothing beyond them was missed (0: no search).
    certify_top: float = 0.01
    trace_rtol: float = 0.05
    density_runs: int = 5
    density_steps: int = 50
    # Adaptive sharpness (Andriushchenko et al. 2023), on a grid of radii relative to |w|:
    # worst case by Auto-PGD in the L2 ball, as m-sharpness (groups of sharpness_m samples) and
    # on the whole subset; average case with Gaussian noise of std rho * |w|. The largest radius
    # of each grid is the headline value of the summary.
    rho_worst: tuple[float, ...] = (0.1, 0.25, 0.5)
    rho_average: tuple[float, ...] = (0.01, 0.02, 0.05)
    sharpness_m: int = 128
    bn: str = "recalibrate"
    layer_depth: int = 2  # module-path components that name a parameter group ("layers")
    max_trajectory: int = 40  # checkpoints per member in the PCA trajectory
    seed: int = 0
    device: str | None = None
    # Where eigen-solves keep their basis: "device" or "cpu" (memory only; values unchanged).
    lanczos_basis: str = "device"

    def validate(self) -> None:
        unknown = [a for a in self.analyses if a not in ANALYSES]
        if unknown:
            raise LandscapeError(
                f"unknown analysis {unknown[0]!r}; choose from {', '.join(ANALYSES)}"
            )
        if self.grid < 3 or self.grid % 2 == 0:
            raise LandscapeError(f"--grid must be an odd number of at least 3, not {self.grid}")
        if self.samples < 1 or self.test_samples < 1:
            raise LandscapeError("--samples must be positive")
        if self.batch_size < 1:
            raise LandscapeError(f"--batch-size must be positive, not {self.batch_size}")
        rhos = (*self.rho_worst, *self.rho_average)
        if not self.rho_worst or not self.rho_average or min(rhos) <= 0:
            raise LandscapeError("sharpness radii (--rho-worst, --rho-average) must be positive")
        if self.k < 1 or self.tol <= 0 or self.trace_rtol <= 0:
            raise LandscapeError("--k must be positive, and --tol and --trace-rtol positive")
        if not 0 <= self.certify_top < 1:
            raise LandscapeError(f"certify_top must be in [0, 1), not {self.certify_top}")
        if self.layer_depth < 1:
            raise LandscapeError(f"--layer-depth must be positive, not {self.layer_depth}")
        if self.lanczos_basis not in ("device", "cpu"):
            raise LandscapeError(f"lanczos_basis must be device or cpu, not {self.lanczos_basis!r}")
        if self.sharpness_m < 1:
            raise LandscapeError(f"--sharpness-m must be positive, not {self.sharpness_m}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _batches(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


class Context:
    """Data subsets and members' weights for one analysis, loaded on first use."""

    def __init__(self, run: Run, settings: AnalyzeSettings, show_progress: bool = True) -> None:
        self.run, self.s, self.show = run, settings, show_progress
        self.device = resolve_device(settings.device)
        self._data: dict[str, list[tuple[Tensor, Tensor]]] = {}
        self._states: dict[tuple[int, str], dict[str, Tensor]] = {}

    def data(self, split: str, shard: bool = False) -> list[tuple[Tensor, Tensor]]:
        """The fixed, seeded subset of ``split`` ("train" or "test") as device batches.

        With ``shard`` under ``torch.distributed``, this rank's share (every world-size-th sample):
        Hessian products sum the shards over ranks, so each rank passes only its own.
        """
        rank, world = rank_and_world()
        if shard and world > 1:
            key = f"{split}@{rank}/{world}"
            if key not in self._data:
                x = torch.cat([xb for xb, _ in self.data(split)])
                y = torch.cat([yb for _, yb in self.data(split)])
                self._data[key] = _batches(x[rank::world], y[rank::world], self.s.batch_size)
            return self._data[key]
        if split not in self._data:
            ds = self._dataset()
            for name in ("train", "test"):
                n_all = len(ds.targets(name))
                n = min(self.s.samples if name == "train" else self.s.test_samples, n_all)
                gen = torch.Generator().manual_seed(self.s.seed + (0 if name == "train" else 1))
                idx = torch.randperm(n_all, generator=gen)[:n].sort().values.to(ds.device)
                self._data[name] = _batches(
                    ds.inputs(name, idx), ds.targets(name, idx), self.s.batch_size
                )
        return self._data[split]

    def full_split(self, split: str) -> list[tuple[Tensor, Tensor]]:
        """The whole ``split`` ("train": un-augmented) as device batches, for loss and accuracy."""
        key = f"{split}@full"
        if key not in self._data:
            ds = self._dataset()
            self._data[key] = _batches(ds.inputs(split), ds.targets(split), 1024)
        return self._data[key]

    def _dataset(self) -> Any:
        from okdph.data import DataError, load_dataset

        try:
            return load_dataset(
                self.run.data["name"], self.device, **self.run.data.get("kwargs", {})
            )
        except DataError as err:
            # okdph's messages speak its --set syntax; say what landscape's flag is.
            text = (
                str(err)
                .replace("pass data.download=true or a valid data.root", "pass --data-root DIR")
                .replace("pass data.download=true to fetch", "pass --data-root DIR holding")
            )
            raise LandscapeError(text) from None

    def n_samples(self, split: str) -> int:
        return sum(len(y) for _, y in self.data(split))

    def template(self, member: str) -> nn.Module:
        return self.run.build_model(member).to(self.device).eval()

    def state(self, epoch: int, member: str) -> dict[str, Tensor]:
        """The member's weights as saved (on the device)."""
        key = (epoch, member)
        if key not in self._states:
            if len(self._states) > 16:
                self._states.clear()
            ckpt = self.run.checkpoint(epoch)
            model = self.run.load_model(ckpt, member)  # validates shapes against the architecture
            self._states[key] = {k: v.to(self.device) for k, v in model.state_dict().items()}
        return self._states[key]

    def model(self, epoch: int, member: str) -> nn.Module:
        """The member as a network in eval mode; the hybrid with recalibrated BatchNorm statistics."""
        net = self.template(member)
        state = self.state(epoch, member)
        if self.needs_recalibration(member, net):
            state = recalibrate(net, state, self.data("train"))
        net.load_state_dict(state)
        return net.eval()

    def needs_recalibration(self, member: str, net: nn.Module) -> bool:
        return (
            self.run.roles.get(member) == "hybrid"
            and self.s.bn == "recalibrate"
            and bool(batchnorm_layers(net))
        )

    def ckpt_digest(self, epoch: int, members: tuple[str, ...]) -> list[str]:
        ckpt: Checkpoint = self.run.checkpoint(epoch)
        return [file_digest(ckpt.files[m]) for m in members]


# ---- the pieces ---------------------------------------------------------------------------------
def curvature_record(ctx: Context, epoch: int, member: str, analysis: str) -> dict[str, Any]:
    s, model, data = ctx.s, ctx.model(epoch, member), ctx.data("train", shard=True)
    common = {"seed": s.seed, "device": ctx.device, "show_progress": ctx.show}
    if analysis == "eigen":
        result = top_eigenvalues(
            model,
            F.cross_entropy,
            data,
            k=s.k,
            which="both",
            tol=s.tol,
            certify_top=s.certify_top or None,
            basis_device="cpu" if s.lanczos_basis == "cpu" else None,
            **common,
        )
    elif analysis == "trace":
        result = hessian_trace(model, F.cross_entropy, data, rtol=s.trace_rtol, **common)
    elif analysis == "layers":
        result = layer_curvature(
            model,
            F.cross_entropy,
            data,
            depth=s.layer_depth,
            tol=s.tol,
            rtol=s.trace_rtol,
            **common,
        )
    else:
        result = spectral_density(
            model, F.cross_entropy, data, n_runs=s.density_runs, n_steps=s.density_steps, **common
        )
    record = result.to_dict()
    record["bn"] = "recalibrated" if ctx.needs_recalibration(member, model) else "own"
    return record


def fit_record(ctx: Context, epoch: int, member: str) -> dict[str, Any]:
    """Loss and accuracy on the whole train (un-augmented) and test splits in eval mode, the
    generalisation gaps, and the weight norm: what flatness is meant to predict, and a scale."""
    model = ctx.model(epoch, member)
    out: dict[str, Any] = {"definition": definition("fit")}
    for split in ("train", "test"):
        result = evaluate(model, None, ctx.full_split(split), device=ctx.device)
        out[split] = {"loss": result.loss, "accuracy": result.accuracy, "n": result.n_samples}
    out["gap_loss"] = out["test"]["loss"] - out["train"]["loss"]
    out["gap_accuracy"] = out["train"]["accuracy"] - out["test"]["accuracy"]
    params = [p.detach().double() for p in model.parameters()]
    out["weight_norm"] = float(torch.sqrt(sum((p**2).sum() for p in params)))
    out["bn"] = "recalibrated" if ctx.needs_recalibration(member, model) else "own"
    return out


def sharpness_record(ctx: Context, epoch: int, member: str) -> dict[str, Any]:
    """Sharpness on both radius grids: ``{"worst": [...], "worst_full": [...], "average": [...]}``
    (one result per radius, in grid order), the statistics fixed at the centre's (recalibrated
    once there for a hybrid model under ``bn=recalibrate``)."""
    s = ctx.s
    model = ctx.template(member)
    common: dict[str, Any] = {
        "adaptive": True,
        "seed": s.seed,
        "center_bn": "recalibrate" if ctx.needs_recalibration(member, model) else "own",
        "device": ctx.device,
        "show_progress": ctx.show,
    }
    m = s.sharpness_m if s.sharpness_m < s.samples else None
    runs = {
        "worst": [dict(kind="worst", rho=r, m=m) for r in s.rho_worst],
        "worst_full": [dict(kind="worst", rho=r, m=None) for r in s.rho_worst],
        "average": [dict(kind="average", rho=r) for r in s.rho_average],
    }
    data, state = ctx.data("train"), ctx.state(epoch, member)
    return {
        name: [sharpness(model, state, data, **kw, **common).to_dict() for kw in kwargs]
        for name, kwargs in runs.items()
    }


def _surface_record(
    result: Any, title: str, axes: dict[str, str], points: dict[str, list[float]], **extra: Any
) -> dict[str, Any]:
    detail = result.to_dict()
    for big in ("loss", "accuracy", "nonfinite", "coordinates"):
        detail.pop(big, None)
    # Surface arrays are indexed [x, y]; Plotly wants z[y][x].
    return {
        "title": title,
        "x": result.coordinates[0].tolist(),
        "y": result.coordinates[1].tolist(),
        "train": {"loss": result.loss.T.tolist(), "accuracy": result.accuracy.T.tolist()},
        "axes": axes,
        "points": points,
        "detail": detail,
        **extra,
    }


def _surface(
    ctx: Context,
    template: nn.Module,
    center: Any,
    directions: Any,
    grid: Any,
    store: Path | None,
    carries_buffers: bool = False,
) -> Any:
    """A training-loss surface under the analysis' BatchNorm policy, centre included.

    ``interpolate`` needs directions that move the running statistics too (between models); for
    other directions the policy falls back to ``recalibrate`` (the result records which ran).
    """
    s = ctx.s
    bn = s.bn if s.bn != "interpolate" or carries_buffers else "recalibrate"
    return surface(
        template,
        center,
        ctx.data("train"),
        directions=directions,
        grid=grid,
        bn=bn,
        bn_center="policy",
        seed=s.seed,
        store=store,
        device=ctx.device,
        show_progress=ctx.show,
    )


def random_surface_record(ctx: Context, epoch: int, member: str, store: Path) -> dict[str, Any]:
    s = ctx.s
    result = _surface(
        ctx, ctx.template(member), ctx.state(epoch, member), "random", (s.radius, s.grid), store
    )
    unit = result.units
    return _surface_record(
        result,
        f"{member}, epoch {epoch}, random directions",
        {"x": f"direction 1 ({unit})", "y": f"direction 2 ({unit})"},
        {member: [0.0, 0.0]},
        equal_axes=True,
    )


def interpolation_record(ctx: Context, epoch: int, start: str, end: str) -> dict[str, Any]:
    s = ctx.s
    alphas = np.linspace(-0.25, 1.25, s.alphas)
    record: dict[str, Any] = {
        "label": f"{start} \u2192 {end}",
        "start": start,
        "end": end,
        "alphas": None,
        "barrier": {},
        "error_barrier": {},
        "detail": {},
    }
    for split in ("train", "test"):
        curve = interpolate(
            ctx.template(start),
            ctx.state(epoch, start),
            ctx.state(epoch, end),
            ctx.data(split),
            alphas=alphas,
            bn=s.bn,
            bn_data=ctx.data("train"),
            bn_endpoints="policy",
            device=ctx.device,
            show_progress=ctx.show,
        )
        record["alphas"] = curve.alphas.tolist()
        record[split] = {"loss": curve.loss.tolist(), "accuracy": curve.accuracy.tolist()}
        record["barrier"][split] = curve.barrier
        record["error_barrier"][split] = curve.error_barrier
        detail = curve.to_dict()
        for big in ("alphas", "loss", "accuracy", "nonfinite"):
            detail.pop(big, None)
        record["detail"][split] = detail
    return record


def plane_record(
    ctx: Context, epoch: int, members: tuple[str, str, str], store: Path
) -> dict[str, Any]:
    """The plane through ``members``; when the third is the two students' midpoint (a 2-student
    OKDPH checkpoint), the plane of the students' line and a random direction through the midpoint."""
    s = ctx.s
    a, b, c = members
    template = ctx.template(a)
    names = parameter_names(template)
    stats = [n for n in running_stat_names(template) if ctx.state(epoch, a)[n].is_floating_point()]
    sa, sb, sc = (ctx.state(epoch, m) for m in members)
    gap = max(
        float((sc[n].double() - (sa[n].double() + sb[n].double()) / 2).abs().max()) for n in names
    )
    scale = max(float(sa[n].abs().max()) for n in names)
    if gap > 1e-6 * scale:
        plane = plane_through(sa, sb, sc, names, buffers=stats, labels=members)
        kind = "through the three members"
    else:
        # c is the midpoint of a and b: pick a random direction, orthogonalise it against b - a,
        # give it the length |b - a|, and span the plane with c as the origin.
        r = random_direction(sc, names, seed=torch.Generator().manual_seed(s.seed))
        ab = {n: sb[n].double() - sa[n].double() for n in names}
        ab2 = sum(float((t * t).sum()) for t in ab.values())
        proj = sum(float((r[n].double() * ab[n]).sum()) for n in names) / ab2
        perp = {n: r[n].double() - proj * ab[n] for n in names}
        length = math.sqrt(sum(float((t * t).sum()) for t in perp.values()))
        side = {
            n: (sc[n].double() + perp[n] * math.sqrt(ab2) / length).to(sc[n].dtype) for n in names
        }
        pseudo = {**sc, **side}
        plane = plane_through(sc, sb, pseudo, names, buffers=stats, labels=(c, b, "random"))
        half = math.sqrt(ab2) / 2
        plane = dataclasses.replace(
            plane, coordinates={c: (0.0, 0.0), b: (half, 0.0), a: (-half, 0.0)}
        )
        kind = f"{c} is the midpoint of {a} and {b}: their line and an orthogonal random direction"
    if kind.startswith("through"):
        xs, ys = plane_grid(plane, s.grid, margin=0.3)
    else:
        xs = ys = grid_coordinates(1.6 * half, s.grid)
    result = _surface(ctx, template, None, plane, [xs, ys], store, carries_buffers=True)
    points = {m: list(plane.coordinates[m]) for m in members}
    return _surface_record(
        result,
        f"plane of {', '.join(members)}, epoch {epoch}",
        {"x": "L2 distance along axis 1", "y": "L2 distance along axis 2"},
        points,
        kind=kind,
        plane=plane.to_dict(),
        equal_axes=True,
    )


def trajectory_record(
    ctx: Context, epochs: list[int], networks: list[str], centre: str, store: Path
) -> dict[str, Any]:
    s = ctx.s
    last = epochs[-1]
    if len(epochs) > s.max_trajectory:
        pick = np.unique(np.linspace(0, len(epochs) - 1, s.max_trajectory).round().astype(int))
        epochs = [epochs[i] for i in pick]
    template = ctx.template(networks[0])
    names = parameter_names(template)
    rows, owners = [], []
    for m in networks:
        for e in epochs:
            rows.append({n: ctx.state(e, m)[n] for n in names})
            owners.append((m, e))
    origin = ctx.state(last, centre)
    pca = pca_trajectory(rows, names, k=2, origin=origin)
    coords = np.asarray(pca.coordinates)
    trajectories = {
        m: coords[[i for i, (o, _) in enumerate(owners) if o == m]].tolist() for m in networks
    }
    pad = 0.15 * (np.ptp(coords, axis=0) + 1e-12)
    xs = span_coordinates(coords[:, 0].min() - pad[0], coords[:, 0].max() + pad[0], s.grid)
    ys = span_coordinates(coords[:, 1].min() - pad[1], coords[:, 1].max() + pad[1], s.grid)
    result = _surface(ctx, template, origin, pca, [xs, ys], store)
    ratio = [float(v) for v in pca.explained_variance_ratio]
    points = {centre: [0.0, 0.0]}
    for m in networks:
        points[m] = trajectories[m][-1]
    return _surface_record(
        result,
        f"PCA of the trajectories of {', '.join(networks)} (epochs {epochs[0]}-{epochs[-1]})",
        {
            "x": f"PC 1 ({100 * ratio[0]:.1f}% of variance, L2 distance)",
            "y": f"PC 2 ({100 * ratio[1]:.1f}% of variance, L2 distance)",
        },
        points,
        trajectories=trajectories,
        epochs=epochs,
        explained_variance_ratio=ratio,
    )
