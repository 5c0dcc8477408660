"""``landscape analyze``: every flatness measure for every member of a run, resumable.

For each chosen epoch and member (students, the hybrid): extreme Hessian eigenvalues (both ends),
trace, spectral density, adaptive sharpness (average and worst case) and a filter-normalised random
2D surface. Across members: interpolation curves between every pair of students and from each
student to the hybrid, and a 2D surface on the plane through two students and the hybrid. Across
epochs: a surface on the PCA plane of the students' trajectories. What each piece computes, and on
which data, is in ``landscape.pipeline.steps``.

Work is split into pieces stored by ``ResultsStore``; a re-run computes only missing or changed
pieces, and under ``torch.distributed`` the engines share each piece's work across ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from landscape.core.definitions import definition
from landscape.core.distributed import broadcast, rank_and_world
from landscape.core.errors import LandscapeError
from landscape.core.progress import ProgressLines, progress
from landscape.pipeline.runs import Run
from landscape.pipeline.steps import (
    ANALYSES,
    DEFAULT_ANALYSES,
    AnalyzeSettings,
    Context,
    curvature_record,
    fit_record,
    interpolation_record,
    plane_record,
    random_surface_record,
    sharpness_record,
    trajectory_record,
)
from landscape.pipeline.store import ResultsStore, fingerprint

__all__ = [
    "ANALYSES",
    "DEFAULT_ANALYSES",
    "AnalysisOutcome",
    "AnalyzeSettings",
    "analyze_run",
    "plan",
    "run_pieces",
    "select_epochs",
]

PER_MEMBER = ("fit", "eigen", "trace", "density", "sharpness", "surface", "layers")
# The settings each analysis depends on (besides samples, batch_size, seed and bn): a piece is
# recomputed when one of these changes, and only then.
DEPENDS_ON = {
    "fit": (),
    "eigen": ("k", "tol", "certify_top"),
    "trace": ("trace_rtol",),
    "layers": ("layer_depth", "tol", "trace_rtol"),
    "density": ("density_runs", "density_steps"),
    "sharpness": ("rho_average", "rho_worst", "sharpness_m"),
    "surface": ("grid", "radius"),
    "interp": ("alphas", "test_samples"),
    "plane": ("grid",),
    "trajectory": ("grid", "max_trajectory"),
}


@dataclass
class Piece:
    """One unit of work: a key in the store, what it depends on, and how to compute it."""

    key: str
    analysis: str
    epoch: int | None
    members: tuple[str, ...]
    compute: Callable[[], dict[str, Any]]


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


# ---- planning and running -----------------------------------------------------------------------
def plan(ctx: Context, store: ResultsStore) -> list[tuple[Piece, str]]:
    """Every piece of every analysis under these settings, with its fingerprint; the caller
    computes those of the analyses asked for and reports every one the store holds."""
    run, s = ctx.run, ctx.s
    epochs = select_epochs(run, s.epochs)
    values = s.to_dict()
    pieces: list[tuple[Piece, str]] = []

    def add(piece: Piece, *parts: Any) -> None:
        names = ("samples", "batch_size", "seed", "bn", *DEPENDS_ON[piece.analysis])
        relevant = {k: values[k] for k in names}
        measure = definition(piece.analysis)
        pieces.append((piece, fingerprint(piece.key, relevant, measure, run.data, *parts)))

    for epoch in epochs:
        present = run.checkpoint(epoch).members
        members = [m for m in (s.members or run.members) if m in present]
        networks = [m for m in members if run.roles.get(m) != "hybrid"]
        hybrids = [m for m in members if run.roles.get(m) == "hybrid"]
        tag = f"epoch_{epoch:04d}"
        for member in members:
            digest = ctx.ckpt_digest(epoch, (member,))
            for analysis in PER_MEMBER:
                key = f"{tag}/{member}/{analysis}"
                if analysis in ("eigen", "trace", "density", "layers"):
                    fn = partial(curvature_record, ctx, epoch, member, analysis)
                elif analysis == "sharpness":
                    fn = partial(sharpness_record, ctx, epoch, member)
                elif analysis == "fit":
                    fn = partial(fit_record, ctx, epoch, member)
                else:
                    fn = partial(random_surface_record, ctx, epoch, member, store.partial_dir(key))
                add(Piece(key, analysis, epoch, (member,), fn), digest)
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
        if len(networks) >= 2 and (hybrids or len(networks) >= 3):
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
    if len(run.checkpoints) >= 3:
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
    missing = broadcast(missing, world)
    todo = [(p, fp) for p, fp in pieces if p.key in set(missing)]
    done = {p.key for p, _ in pieces} - set(missing)
    for piece, fp in pieces:
        if piece.key in done:
            records[piece.key] = store.get(piece.key, fp)
    lines = ProgressLines(len(todo), "piece", enable=show_progress)
    lines.say(f"{len(todo)} of {len(pieces)} pieces to compute ({len(done)} stored)")
    bar = progress(todo, desc="analyses", enable=show_progress)
    for piece, fp in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(piece.key)
        record = piece.compute()
        if rank == 0:
            store.put(piece.key, fp, record)
        records[piece.key] = record
        computed += 1
        lines.step(piece.key)
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
    data_root: str | Path | None = None,
    formats: tuple[str, ...] = ("html", "json"),
    self_contained: bool = False,
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
        self_contained: inline plotly.js in ``report.html`` (one file that travels) instead of
            writing ``plotly.min.js`` beside it.
        resume: reuse the settings stored by the previous call in ``out``.
        data_root: folder holding the dataset's files (CIFAR), overriding the run's.
        show_progress: progress bars on stderr.
    """
    from landscape.pipeline.runs import open_run
    from landscape.pipeline.summary import build_summary, write_outputs

    unknown = [f for f in formats if f not in ("html", "json", "png", "svg", "pdf")]
    if unknown:
        raise LandscapeError(
            f"unknown format {unknown[0]!r}; choose from html, json, png, svg, pdf"
        )
    run = open_run(path, arch, data, data_root)
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
        self_contained = bool(stored.get("self_contained", self_contained))
    settings = settings or AnalyzeSettings()
    settings.validate()
    unknown_members = [m for m in settings.members if m not in run.members]
    if unknown_members:
        raise LandscapeError(
            f"{run.path} has no member {unknown_members[0]!r}; members: {', '.join(run.members)}"
        )
    ctx = Context(run, settings, show_progress)
    planned = plan(ctx, store)
    pieces = [(p, fp) for p, fp in planned if p.analysis in settings.analyses]
    # Fail on a checkpoint that does not fit its architecture, or whose weights are not finite,
    # before spending any compute.
    for epoch, member in sorted(
        {(p.epoch, m) for p, _ in pieces for m in p.members if p.epoch is not None}
    ):
        state = ctx.state(epoch, member)
        bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise LandscapeError(
                f"{member} at epoch {epoch} has non-finite weights (NaN or inf in {bad[0]}); "
                f"the run diverged there: analyse an earlier epoch with --epochs"
            )
    rank, world = rank_and_world()
    with _exclusive(store, rank, world):
        if rank == 0:
            store.write_settings(
                {
                    "settings": settings.to_dict(),
                    "formats": list(formats),
                    "self_contained": self_contained,
                    "run": str(run.path),
                    "arch": arch,
                    "data": data,
                }
            )
        records, computed = run_pieces(pieces, store, show_progress and rank == 0)
        # The report shows every result the store holds for these settings, not only the
        # analyses asked for this time (a subset re-run must not hide earlier results).
        extra = [(p, fp) for p, fp in planned if p.key not in records]
        held = {p.key: r for p, fp in extra if (r := store.get(p.key, fp)) is not None}
        records = {**records, **held}
        pieces = pieces + [(p, fp) for p, fp in extra if p.key in held]
        files = {p.key: store.data_file(p.key) for p, _ in pieces}
        summary = build_summary(run, settings.to_dict(), records, files, computed)
        report, message = (
            write_outputs(summary, out, formats, self_contained) if rank == 0 else (None, None)
        )
    return AnalysisOutcome(summary, out, report, computed, message)


@contextlib.contextmanager
def _exclusive(store: ResultsStore, rank: int, world: int) -> Iterator[None]:
    """Rank 0 holds the store's lock for the whole analysis; every rank learns if it was refused
    (so none waits forever at the next collective)."""
    with contextlib.ExitStack() as stack:
        refused = None
        if rank == 0:
            try:
                stack.enter_context(store.lock())
            except LandscapeError as err:
                refused = str(err)
        refused = broadcast(refused, world)
        if refused is not None:
            raise LandscapeError(refused)
        yield
