"""``landscape analyze``: every flatness measure for every member of a run, resumable.

For each chosen epoch and member (students, the hybrid): extreme Hessian eigenvalues (both ends),
trace, spectral density, adaptive sharpness (average and worst case) and a filter-normalised random
2D surface. Across members: interpolation curves between every pair of students and from each
student to the hybrid, and a 2D surface on the plane through two students and the hybrid. Across
epochs: a surface on the PCA plane of the students' trajectories. Each measure is a module of
``landscape.measures``; this module plans the work of every registered measure and runs it.

Work is split into pieces (one result each) stored by ``ResultsStore``; a re-run computes only
missing or changed pieces, and under ``torch.distributed`` the engines share each piece's work
across ranks.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.core.distributed import broadcast, rank_and_world
from landscape.core.errors import LandscapeError
from landscape.core.progress import ProgressLines, progress
from landscape.measures.base import Measure, PieceKey, Scope, Target
from landscape.measures.registry import default_analyses, measures
from landscape.measures.registry import get as get_measure
from landscape.pipeline.context import AnalyzeSettings, Context
from landscape.pipeline.runs import Run
from landscape.pipeline.store import ResultsStore, fingerprint

__all__ = [
    "AnalysisOutcome",
    "AnalyzeSettings",
    "WorkItem",
    "analyze_run",
    "default_analyses",
    "measure_one",
    "plan",
    "run_pieces",
    "select_epochs",
]


@dataclass
class WorkItem:
    """One result to compute or reuse: its measure and target, and the fingerprint of its
    inputs (settings, measure definition, checkpoint files) under which the store keeps it."""

    measure: Measure
    target: Target
    fingerprint: str

    @property
    def key(self) -> PieceKey:
        return self.target.key

    @property
    def path(self) -> str:
        return self.target.key.path()


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
def targets(run: Run, settings: AnalyzeSettings, measure: Measure) -> list[Target]:
    """What ``measure`` measures in ``run`` under ``settings``, by its scope.

    Member: every selected member at every chosen epoch. Pair: every two trained members (not
    the hybrid), then each of them with the hybrid. Plane: two trained members and the hybrid
    (or a third trained member). Run: the trained members present at every checkpoint up to the
    last chosen epoch, centred on the hybrid when there is one. A measure may choose its own
    pairs or planes (``Measure.groups``).
    """
    scope, name = measure.scope, measure.name
    out: list[Target] = []
    chosen = settings.members or run.members
    epochs = select_epochs(run, settings.epochs)
    if scope is Scope.RUN:
        if len(run.checkpoints) < 3:
            return []
        last = epochs[-1]
        spanned = [c.epoch for c in run.checkpoints if c.epoch <= last]
        networks = [
            m
            for m in (settings.members or run.networks)
            if run.roles.get(m) != "hybrid" and all(m in run.checkpoint(e).members for e in spanned)
        ]
        centre = next(
            (
                m
                for m in chosen
                if run.roles.get(m) == "hybrid" and m in run.checkpoint(last).members
            ),
            networks[0] if networks else None,
        )
        if networks and len(spanned) >= 3:
            key = PieceKey(name, scope, None, tuple(networks))
            out.append(Target(key, tuple(spanned), centre))
        return out
    for epoch in epochs:
        present = run.checkpoint(epoch).members
        members = [m for m in chosen if m in present]
        networks = [m for m in members if run.roles.get(m) != "hybrid"]
        hybrids = [m for m in members if run.roles.get(m) == "hybrid"]
        groups: list[tuple[str, ...]]
        chosen_groups = measure.groups(networks, hybrids) if scope is not Scope.MEMBER else None
        if chosen_groups is not None:
            groups = chosen_groups
        elif scope is Scope.MEMBER:
            groups = [(m,) for m in members]
        elif scope is Scope.PAIR:
            groups = list(itertools.combinations(networks, 2))
            groups += [(n, h) for h in hybrids for n in networks]
        elif len(networks) >= 2 and (hybrids or len(networks) >= 3):
            groups = [(networks[0], networks[1], hybrids[0] if hybrids else networks[2])]
        else:
            groups = []
        out += [Target(PieceKey(name, scope, epoch, g)) for g in groups]
    return out


def plan(ctx: Context) -> list[WorkItem]:
    """Every result of every registered measure under these settings, with its fingerprint;
    the caller computes those of the analyses asked for and reports every one the store holds.

    A fingerprint hashes the result's key, the settings it depends on (``Measure.inputs``), its
    measure's definition, the run's data and the digests of the checkpoint files it reads.
    """
    run, values = ctx.run, ctx.settings.to_dict()
    items = []
    for measure in measures().values():
        relevant = measure.fingerprint_inputs(values)
        for target in targets(run, ctx.settings, measure):
            if measure.scope is Scope.RUN:
                last = target.epoch
                assert target.centre is not None
                parts: tuple[Any, ...] = (
                    [ctx.ckpt_digest(e, target.members) for e in target.epochs],
                    target.centre,
                    ctx.ckpt_digest(last, (target.centre,)),
                )
            else:
                parts = (ctx.ckpt_digest(target.epoch, target.members),)
            fp = fingerprint(target.key.path(), relevant, measure.definition, run.data, *parts)
            items.append(WorkItem(measure, target, fp))
    return items


def compute(ctx: Context, item: WorkItem, store: ResultsStore | None = None) -> dict[str, Any]:
    """The record of one work item (a long one keeps resumable chunks in ``store``)."""
    workdir = store.partial_dir(item.path) if store is not None else None
    settings = ctx.settings.for_measure(item.measure)
    return item.measure.compute(ctx, item.target, settings, workdir)


def measure_one(ctx: Context, name: str, epoch: int, *members: str) -> dict[str, Any]:
    """One measure's record for ``members`` at ``epoch``, outside any results store (what
    ``landscape hessian|interp|surface`` and the notebooks use): e.g.
    ``measure_one(ctx, "interp", 30, "student_0", "hybrid")``."""
    measure = get_measure(name)
    target = Target(PieceKey(name, measure.scope, epoch, members))
    return measure.compute(ctx, target, ctx.settings.for_measure(measure), None)


def redefined(items: list[WorkItem], store: ResultsStore) -> list[str]:
    """Why stored pieces among ``items`` are recomputed when their measure's definition changed:
    one line per measure and old version."""
    counts: dict[tuple[str, str, str], int] = {}
    for item in items:
        old = store.stored_definition(item.path)
        new = item.measure.definition
        if old is not None and old.split(":")[0] != new.split(":")[0]:
            key = (item.measure.name, old.split(":")[0], new.split(":")[0])
            counts[key] = counts.get(key, 0) + 1
    return [
        f"recomputing {n} stored {name} piece(s): the definition changed from {old} to {new}"
        for (name, old, new), n in counts.items()
    ]


def run_pieces(
    ctx: Context, items: list[WorkItem], store: ResultsStore, show_progress: bool = True
) -> tuple[dict[str, dict[str, Any]], int]:
    """Compute what is missing; returns every item's record by path and how many were
    computed now.

    Under torch.distributed every rank computes every missing item (the engines split the work
    inside it), rank 0 decides what is missing and alone writes to the store. Each record
    computed now carries ``compute_seconds``, its wall-clock time.
    """
    records: dict[str, dict[str, Any]] = {}
    computed = 0
    rank, world = rank_and_world()
    absent = (
        [i.path for i in items if store.get(i.path, i.fingerprint) is None] if rank == 0 else None
    )
    missing = set(broadcast(absent, world))
    todo = [i for i in items if i.path in missing]
    for item in items:
        held = store.get(item.path, item.fingerprint) if item.path not in missing else None
        if held is not None:
            records[item.path] = held
    lines = ProgressLines(len(todo), "piece", enable=show_progress)
    lines.say(f"{len(todo)} of {len(items)} pieces to compute ({len(items) - len(todo)} stored)")
    for reason in redefined(todo, store) if rank == 0 else []:
        print(f"landscape: {reason}", file=sys.stderr, flush=True)
    bar = progress(todo, desc="analyses", enable=show_progress)
    for item in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(item.path)
        start = time.perf_counter()
        record = compute(ctx, item, store)
        record["compute_seconds"] = time.perf_counter() - start
        if rank == 0:
            store.put(item.path, item.fingerprint, record)
        records[item.path] = record
        computed += 1
        lines.step(item.path)
    return records, computed


@dataclass
class AnalysisOutcome:
    """What ``analyze_run`` produced: the summary, where it lives, and what happened."""

    summary: dict[str, Any]
    out: Path
    report: Path | None
    computed: int
    export_message: str | None
    #: stored pieces computed under other settings, so not in this summary (see ``left_out_note``)
    left_out: tuple[str, ...] = ()

    def left_out_note(self) -> str | None:
        """One sentence on the stored results this summary leaves out, or ``None``."""
        if not self.left_out:
            return None
        counts = Counter(PieceKey.parse(path).measure for path in self.left_out)
        listed = ", ".join(f"{m} ({n})" for m, n in sorted(counts.items()))
        return (
            f"{len(self.left_out)} stored results were computed with other settings and are not "
            f"in this summary or report: {listed}; analyse with the settings that made them "
            "(e.g. the same --k and --samples) to show them beside these"
        )


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
        fields = set(AnalyzeSettings().to_dict())  # a measure no longer installed is dropped
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
    planned = plan(ctx)
    items = [i for i in planned if i.measure.name in settings.analyses]
    # Fail on a checkpoint that does not fit its architecture, or whose weights are not finite,
    # before spending any compute.
    for epoch, member in sorted({(i.target.epoch, m) for i in items for m in i.target.members}):
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
        records, computed = run_pieces(ctx, items, store, show_progress and rank == 0)
        # The report shows every result the store holds for these settings, not only the
        # analyses asked for this time (a subset re-run must not hide earlier results).
        left_out = []
        for item in planned:
            if item.path not in records:
                held = store.get(item.path, item.fingerprint)
                if held is not None:
                    records[item.path] = held
                elif store.holds(item.path):
                    left_out.append(item.path)
        files = {path: store.data_file(path) for path in records}
        summary = build_summary(run, settings.to_dict(), records, files, computed)
        report, message = (
            write_outputs(summary, out, formats, self_contained) if rank == 0 else (None, None)
        )
    return AnalysisOutcome(summary, out, report, computed, message, tuple(left_out))


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
