"""``landscape analyze``: every flatness measure for every member of a run, resumable.

For each chosen epoch and member (students, the hybrid): extreme Hessian eigenvalues (both ends),
trace, spectral density, adaptive sharpness (average and worst case) and a filter-normalised random
2D surface. Across members: interpolation curves between every pair of students and from each
student to the hybrid, and a 2D surface on the plane through two students and the hybrid. Across
epochs: a surface on the PCA plane of the students' trajectories.

Every analysis runs on a fixed, seeded subset of the training split without augmentation (and a
subset of the test split for curves), the model in eval mode. The hybrid's BatchNorm statistics
belong to no trained network, so with ``bn="recalibrate"`` (default) they are recomputed on the
training subset before its curvature is measured. Every point of a curve or surface, its ends and
centre included, follows the same BatchNorm policy, so barriers and basins compare like with like
(each result also records the centre's or ends' loss with their own statistics). Work is split into pieces stored by
``ResultsStore``; a re-run computes only missing or changed pieces.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape._common import LandscapeError, progress, resolve_device
from landscape.batchnorm import batchnorm_layers, recalibrate, running_stat_names
from landscape.hessian import hessian_trace, spectral_density, top_eigenvalues
from landscape.interpolate import interpolate
from landscape.params import parameter_names, random_direction
from landscape.results import ResultsStore, file_digest, fingerprint
from landscape.runs import Checkpoint, Run
from landscape.sharpness import sharpness
from landscape.subspace import pca_trajectory, plane_through
from landscape.surface import grid_coordinates, plane_grid, span_coordinates, surface

ANALYSES = ("eigen", "trace", "density", "sharpness", "interp", "plane", "surface", "trajectory")
PER_MEMBER = ("eigen", "trace", "density", "sharpness", "surface")
# The settings each analysis depends on (besides samples, batch_size, seed and bn): a piece is
# recomputed when one of these changes, and only then.
DEPENDS_ON = {
    "eigen": ("k", "tol"),
    "trace": ("trace_rtol",),
    "density": ("density_runs", "density_steps"),
    "sharpness": ("rho_average", "rho_worst"),
    "surface": ("grid", "radius"),
    "interp": ("alphas", "test_samples"),
    "plane": ("grid",),
    "trajectory": ("grid", "max_trajectory"),
}


@dataclass
class AnalyzeSettings:
    """Every knob of ``landscape analyze`` (recorded in settings.json and every piece's hash)."""

    epochs: str = "last"  # "last", "all" or a comma-separated list of epochs
    members: tuple[str, ...] = ()  # empty: every member
    analyses: tuple[str, ...] = ANALYSES
    samples: int = 512  # training samples (a seeded subset), also the BatchNorm calibration set
    test_samples: int = 512
    batch_size: int = 256
    grid: int = 21  # points per surface axis (odd)
    radius: float = 1.0  # random surfaces: half-width in filter-normalised units
    alphas: int = 31  # points on [-0.25, 1.25] for interpolation curves
    k: int = 5  # eigenvalues at each end of the spectrum
    tol: float = 1e-3
    trace_rtol: float = 0.05
    density_runs: int = 5
    density_steps: int = 50
    # Adaptive sharpness (perturbations scaled by |w|): average case with Gaussian noise of std
    # rho_average * |w| per weight (Andriushchenko et al. 2023); worst case in the L2 ball of
    # radius rho_worst (ASAM's default radius).
    rho_average: float = 0.05
    rho_worst: float = 0.5
    bn: str = "recalibrate"
    max_trajectory: int = 40  # checkpoints per member in the PCA trajectory
    seed: int = 0
    device: str | None = None

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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Piece:
    """One unit of work: a key in the store, what it depends on, and how to compute it."""

    key: str
    analysis: str
    epoch: int | None
    members: tuple[str, ...]
    compute: Callable[[], dict[str, Any]]
    depends: list[str] = field(default_factory=list)


def select_epochs(run: Run, spec: str) -> list[int]:
    """Epochs named by ``spec`` (``last``, ``all`` or ``3,10,30``) that the run has."""
    have = [c.epoch for c in run.checkpoints]
    if spec == "last":
        return have[-1:]
    if spec == "all":
        return have
    try:
        wanted = [int(e) for e in spec.split(",") if e.strip()]
    except ValueError:
        raise LandscapeError(
            f"--epochs must be last, all or a list of integers, not {spec!r}"
        ) from None
    missing = [e for e in wanted if e not in have]
    if missing:
        raise LandscapeError(
            f"{run.path} has no checkpoint for epoch {missing[0]}; it has {', '.join(map(str, have))}"
        )
    return wanted


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks (``(0, 1)`` without torch.distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
            from okdph.data import DataError, load_dataset

            try:
                ds = load_dataset(
                    self.run.data["name"], self.device, **self.run.data.get("kwargs", {})
                )
            except DataError as err:
                raise LandscapeError(str(err)) from None
            for name in ("train", "test"):
                n_all = len(ds.targets(name))
                n = min(self.s.samples if name == "train" else self.s.test_samples, n_all)
                gen = torch.Generator().manual_seed(self.s.seed + (0 if name == "train" else 1))
                idx = torch.randperm(n_all, generator=gen)[:n].sort().values.to(ds.device)
                self._data[name] = _batches(
                    ds.inputs(name, idx), ds.targets(name, idx), self.s.batch_size
                )
        return self._data[split]

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
            model, F.cross_entropy, data, k=s.k, which="both", tol=s.tol, **common
        )
    elif analysis == "trace":
        result = hessian_trace(model, F.cross_entropy, data, rtol=s.trace_rtol, **common)
    else:
        result = spectral_density(
            model, F.cross_entropy, data, n_runs=s.density_runs, n_steps=s.density_steps, **common
        )
    record = result.to_dict()
    record["bn"] = "recalibrated" if ctx.needs_recalibration(member, model) else "own"
    return record


def sharpness_record(ctx: Context, epoch: int, member: str) -> dict[str, Any]:
    s = ctx.s
    out = {}
    for kind, rho, distribution in (
        ("average", s.rho_average, "gaussian"),
        ("worst", s.rho_worst, "sphere"),
    ):
        result = sharpness(
            ctx.template(member),
            ctx.state(epoch, member),
            ctx.data("train"),
            rho=rho,
            kind=kind,
            adaptive=True,
            distribution=distribution,
            seed=s.seed,
            bn=s.bn if s.bn != "interpolate" else "keep",
            device=ctx.device,
            show_progress=ctx.show,
        )
        out[kind] = result.to_dict()
    return out


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


# ---- planning and running -----------------------------------------------------------------------
def plan(ctx: Context, store: ResultsStore) -> list[tuple[Piece, str]]:
    """Every piece the settings ask for, with its fingerprint."""
    run, s = ctx.run, ctx.s
    epochs = select_epochs(run, s.epochs)
    wanted = set(s.analyses)
    values = s.to_dict()
    pieces: list[tuple[Piece, str]] = []

    def add(piece: Piece, *parts: Any) -> None:
        names = ("samples", "batch_size", "seed", "bn", *DEPENDS_ON[piece.analysis])
        relevant = {k: values[k] for k in names}
        pieces.append((piece, fingerprint(piece.key, relevant, run.data, *parts)))

    for epoch in epochs:
        present = run.checkpoint(epoch).members
        members = [m for m in (s.members or run.members) if m in present]
        networks = [m for m in members if run.roles.get(m) != "hybrid"]
        hybrids = [m for m in members if run.roles.get(m) == "hybrid"]
        tag = f"epoch_{epoch:04d}"
        for member in members:
            digest = ctx.ckpt_digest(epoch, (member,))
            for analysis in PER_MEMBER:
                if analysis not in wanted:
                    continue
                key = f"{tag}/{member}/{analysis}"
                if analysis in ("eigen", "trace", "density"):
                    fn = partial(curvature_record, ctx, epoch, member, analysis)
                elif analysis == "sharpness":
                    fn = partial(sharpness_record, ctx, epoch, member)
                else:
                    fn = partial(random_surface_record, ctx, epoch, member, store.partial_dir(key))
                add(Piece(key, analysis, epoch, (member,), fn), digest)
        if "interp" in wanted:
            pairs = list(itertools.combinations(networks, 2)) + [
                (n, h) for h in hybrids for n in networks
            ]
            for a, b in pairs:
                key = f"{tag}/interp/{a}--{b}"
                add(
                    Piece(
                        key,
                        "interp",
                        epoch,
                        (a, b),
                        partial(interpolation_record, ctx, epoch, a, b),
                    ),
                    ctx.ckpt_digest(epoch, (a, b)),
                )
        if "plane" in wanted and len(networks) >= 2 and (hybrids or len(networks) >= 3):
            trio = (networks[0], networks[1], hybrids[0] if hybrids else networks[2])
            key = f"{tag}/plane/{'--'.join(trio)}"
            add(
                Piece(
                    key,
                    "plane",
                    epoch,
                    trio,
                    partial(plane_record, ctx, epoch, trio, store.partial_dir(key)),
                ),
                ctx.ckpt_digest(epoch, trio),
            )
    if "trajectory" in wanted and len(run.checkpoints) >= 3:
        last = epochs[-1]
        traj_epochs = [c.epoch for c in run.checkpoints if c.epoch <= last]
        networks = [
            m
            for m in (s.members or run.networks)
            if run.roles.get(m) != "hybrid"
            and all(m in run.checkpoint(e).members for e in traj_epochs)
        ]
        centre = next(
            (
                m
                for m in (s.members or run.members)
                if run.roles.get(m) == "hybrid" and m in run.checkpoint(last).members
            ),
            networks[0] if networks else None,
        )
        if networks and len(traj_epochs) >= 3:
            key = f"trajectory/{'--'.join(networks)}"
            digests = [ctx.ckpt_digest(e, tuple(networks)) for e in traj_epochs]
            add(
                Piece(
                    key,
                    "trajectory",
                    last,
                    tuple(networks),
                    partial(
                        trajectory_record,
                        ctx,
                        traj_epochs,
                        networks,
                        centre,
                        store.partial_dir(key),
                    ),
                ),
                digests,
                centre,
                ctx.ckpt_digest(last, (centre,)),
            )
    return pieces


def run_pieces(
    pieces: list[tuple[Piece, str]], store: ResultsStore, show_progress: bool = True
) -> tuple[dict[str, dict[str, Any]], int]:
    """Compute what is missing; returns every piece's record and how many were computed now.

    Under torch.distributed every rank computes every missing piece (the engines split the work
    inside it), rank 0 decides what is missing and alone writes to the store.
    """
    records, computed = {}, 0
    rank, world = rank_and_world()
    missing = [p.key for p, fp in pieces if store.get(p.key, fp) is None] if rank == 0 else None
    if world > 1:
        box = [missing]
        torch.distributed.broadcast_object_list(box, src=0)
        missing = box[0]
    todo = [(p, fp) for p, fp in pieces if p.key in set(missing)]
    done = {p.key for p, _ in pieces} - set(missing)
    for piece, fp in pieces:
        if piece.key in done:
            records[piece.key] = store.get(piece.key, fp)
    bar = progress(todo, desc="analyses", enable=show_progress)
    for piece, fp in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(piece.key)
        record = piece.compute()
        if rank == 0:
            store.put(piece.key, fp, record)
        records[piece.key] = record
        computed += 1
    return records, computed


@dataclass
class AnalysisOutcome:
    """What ``analyze_run`` produced: the summary, where it lives, and what happened."""

    summary: dict[str, Any]
    out: Path
    report: Path | None
    computed: int
    export_message: str | None


def analyze_run(
    path: str | Path,
    settings: AnalyzeSettings | None = None,
    *,
    out: str | Path | None = None,
    arch: str | None = None,
    data: str | None = None,
    formats: tuple[str, ...] = ("html", "json"),
    resume: bool = False,
    show_progress: bool = True,
) -> AnalysisOutcome:
    """Run the analysis suite on a run directory and write its results store and report.

    Args:
        path: a run directory (ours, the OKDPH reference layout, or a folder of state dicts).
        settings: what to compute (default: ``AnalyzeSettings()``).
        out: results folder (default ``RUN_DIR/analysis``).
        arch, data: registry names for foreign layouts.
        formats: any of ``html``, ``json``, ``png``, ``svg``, ``pdf``.
        resume: reuse the settings stored by the previous call in ``out``.
        show_progress: progress bars on stderr.
    """
    from landscape.runs import open_run
    from landscape.summary import build_summary, write_outputs

    unknown = [f for f in formats if f not in ("html", "json", "png", "svg", "pdf")]
    if unknown:
        raise LandscapeError(
            f"unknown format {unknown[0]!r}; choose from html, json, png, svg, pdf"
        )
    run = open_run(path, arch, data)
    out = Path(out) if out else run.path / "analysis"
    store = ResultsStore(out)
    if resume:
        stored = store.read_settings()
        if stored is None:
            raise LandscapeError(f"{out} holds no earlier analysis to resume (no settings.json)")
        fields = {f.name for f in dataclasses.fields(AnalyzeSettings)}
        values = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in stored["settings"].items()
            if k in fields
        }
        settings = AnalyzeSettings(**values)
        formats = tuple(stored.get("formats", formats))
    settings = settings or AnalyzeSettings()
    settings.validate()
    unknown_members = [m for m in settings.members if m not in run.members]
    if unknown_members:
        raise LandscapeError(
            f"{run.path} has no member {unknown_members[0]!r}; members: {', '.join(run.members)}"
        )
    ctx = Context(run, settings, show_progress)
    pieces = plan(ctx, store)
    # Fail on a checkpoint that does not fit its architecture before spending any compute.
    for epoch, member in sorted(
        {(p.epoch, m) for p, _ in pieces for m in p.members if p.epoch is not None}
    ):
        ctx.state(epoch, member)
    rank, _ = rank_and_world()
    if rank == 0:
        store.write_settings(
            {
                "settings": settings.to_dict(),
                "formats": list(formats),
                "run": str(run.path),
                "arch": arch,
                "data": data,
            }
        )
    records, computed = run_pieces(pieces, store, show_progress and rank == 0)
    files = {p.key: store.data_file(p.key) for p, _ in pieces}
    summary = build_summary(run, settings.to_dict(), records, files, computed)
    report, message = write_outputs(summary, out, formats) if rank == 0 else (None, None)
    return AnalysisOutcome(summary, out, report, computed, message)
