"""Gather analysed runs into one tidy table: a row per run, member and measure.

Each run's numbers come from its ``analysis/summary.json`` at its last analysed epoch, which must
be its last checkpoint (never a test-selected one). Runs are refused together unless they were
analysed with the same settings and measure definitions, so like is compared with like.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape.core.errors import LandscapeError
from landscape.measures.base import Field, PieceKey, Scope, is_number
from landscape.measures.registry import measures
from landscape.pipeline.okdph_adapter import read_metrics, read_run_info, read_study

# Settings that may differ between runs without making their numbers incomparable.
IGNORED_SETTINGS = {"members", "analyses", "device", "epochs", "lanczos_basis"}
#: The test accuracy logged by okdph at the checkpoint: the one gathered number no measure makes.
TEST_ACCURACY = Field("test_acc", compare=True, invariant=True, strip=True)


def compare_fields() -> dict[str, Field]:
    """Every number ``landscape compare`` gathers, by name: the logged test accuracy, then the
    ``compare`` fields of every registered measure in registry order."""
    out = {TEST_ACCURACY.name: TEST_ACCURACY}
    for measure in measures().values():
        out.update({f.name: f for f in measure.fields if f.compare})
    return out


@dataclass(frozen=True)
class RunRecord:
    """One analysed run: who it is and its rows ``{member: {measure: value}}``."""

    path: Path
    name: str
    method: str
    seed: int
    epoch: int
    kinds: dict[str, str]  # member -> "students", "pruned", "hybrid", "average" or "ensemble"
    values: dict[str, dict[str, float]]
    settings: dict[str, Any]
    definitions: dict[str, str]
    config: dict[str, Any]
    # The curvature tracked during training (summary.json "tracking"; {} when none).
    tracking: dict[str, Any] = field(default_factory=dict)
    # The test accuracy as the OKDPH reference code reports it (:func:`reported_accuracy`).
    reported: dict[str, Any] = field(default_factory=dict)


def study_runs(path: Path) -> tuple[dict[str, Any] | None, list[tuple[Path, str]]]:
    """``(study.json or None, [(run dir, method label)])`` of a study directory or run list."""
    study = read_study(path)
    if study is None:
        return None, []
    runs = []
    for r in study["runs"]:
        label = "-".join(p for p in (r["method"], r["variant"]) if p)
        runs.append((path / r["name"], label))
    return study, runs


def load_run(path: Path, label: str | None = None) -> RunRecord:
    """The tidy numbers of one analysed run (``LandscapeError`` when it is not analysed)."""
    info = read_run_info(path)
    summary_file = path / "analysis" / "summary.json"
    if not summary_file.exists():
        raise LandscapeError(f"{path} is not analysed yet; run `landscape analyze {path}` first")
    summary = json.loads(summary_file.read_text())
    if info.get("status") != "complete":
        raise LandscapeError(f"{path} has not finished training (status {info.get('status')!r})")
    epoch = max(summary["epochs"])
    if epoch != info.get("epochs_done"):
        raise LandscapeError(
            f"{path} was analysed at epoch {epoch}, not at its last checkpoint "
            f"({info.get('epochs_done')}); analyse with --epochs last"
        )
    base_arch = info.get("arch")
    members = info.get("members", {}) if isinstance(info.get("members"), dict) else {}

    def kind_of(member: str, role: Any) -> str:
        if role in ("ensemble", "hybrid", "average"):
            return str(role)
        entry = members.get(member)
        arch = entry.get("arch") if isinstance(entry, dict) else None
        return "students" if arch in (None, base_arch) else "pruned"

    # Every member run.json lists, even when only curves (no member rows) were analysed.
    kinds = {
        m: kind_of(m, v.get("role") if isinstance(v, dict) else None) for m, v in members.items()
    }
    values: dict[str, dict[str, float]] = {}
    for row in summary["flatness"][str(epoch)]:
        member = row["member"]
        kinds[member] = kind_of(member, row.get("role"))
        values[member] = (
            {"test_acc": float(row["test_acc"])} if is_number(row.get("test_acc")) else {}
        )
    _gather_measures(summary, epoch, kinds, values)
    settings = {k: v for k, v in summary["settings"].items() if k not in IGNORED_SETTINGS}
    definitions = {}
    for rec in summary["records"].values():
        if isinstance(rec, dict):
            for d in _definitions(rec):
                definitions[d.split("/", 1)[0]] = d
    config = info.get("config", {})
    return RunRecord(
        path=path,
        name=path.name,
        method=label or info["method"]["name"],
        seed=int(config.get("seed", 0)),
        epoch=epoch,
        kinds=kinds,
        values=values,
        settings=settings,
        definitions=definitions,
        config=config,
        tracking=summary.get("tracking") or {},
        reported=reported_accuracy(path, [m for m, k in kinds.items() if k != "ensemble"]),
    )


def reported_accuracy(path: Path, networks: list[str]) -> dict[str, Any]:
    """The test accuracy as the OKDPH reference code reports it: the best over every epoch whose
    test split was evaluated and over every network (students, the hybrid, averages; not the
    ensemble of their outputs), read from metrics.jsonl. It selects on the test set, so it is
    optimistic by construction; ``landscape compare`` shows it beside the students' last-epoch
    accuracy to show by how much. ``{}`` when no epoch logged a test accuracy.

    Returns ``value`` (a fraction), the ``epoch`` and ``member`` it came from, and ``epochs``:
    the epochs it is the best over (all epochs only when every epoch was tested)."""
    best: tuple[float, int, str] | None = None
    epochs = []
    for line in read_metrics(path):
        found = [
            (float(line[f"{m}/test_acc"]), int(line["epoch"]), m)
            for m in networks
            if is_number(line.get(f"{m}/test_acc")) and is_number(line.get("epoch"))
        ]
        if found:
            epochs.append(found[0][1])
            top = max(found, key=lambda t: t[0])
            best = top if best is None or top[0] > best[0] else best
    if best is None:
        return {}
    return {"value": best[0], "epoch": best[1], "member": best[2], "epochs": sorted(set(epochs))}


def _gather_measures(
    summary: dict[str, Any],
    epoch: int,
    kinds: dict[str, str],
    values: dict[str, dict[str, float]],
) -> None:
    """Add each registered measure's compare fields at ``epoch`` to ``values`` (per member):
    member-scope fields from the members' rows, the others from the entries the measure
    wrote to summary.json (curves, ...) through ``Measure.run_values``."""
    rows = {row["member"]: row for row in summary["flatness"][str(epoch)]}
    for name, measure in measures().items():
        if measure.scope is Scope.MEMBER:
            entries = {PieceKey(name, Scope.MEMBER, epoch, (m,)): row for m, row in rows.items()}
        else:
            group = summary.get(measure.summary_group or "curves", {})
            entries = {
                key: entry
                for key, entry in ((PieceKey.parse(k), e) for k, e in group.items())
                if key.measure == name and key.epoch == epoch
            }
        for member, found in measure.run_values(entries, kinds).items():
            values.setdefault(member, {}).update(found)


def _definitions(rec: dict[str, Any]) -> list[str]:
    found = [rec["definition"]] if isinstance(rec.get("definition"), str) else []
    for v in rec.values():
        if isinstance(v, dict):
            found += _definitions(v)
        elif isinstance(v, list):
            found += [d for x in v if isinstance(x, dict) for d in _definitions(x)]
    return found


def check_comparable(runs: list[RunRecord]) -> None:
    """Refuse runs analysed with different settings or measure versions (one sentence)."""
    first = runs[0]
    for run in runs[1:]:
        for key in sorted(set(first.settings) | set(run.settings)):
            if first.settings.get(key) != run.settings.get(key):
                raise LandscapeError(
                    f"{first.name} and {run.name} were analysed with different settings ({key}: "
                    f"{first.settings.get(key)!r} vs {run.settings.get(key)!r}); analyse them alike"
                )
        for name in sorted(set(first.definitions) & set(run.definitions)):
            if first.definitions[name] != run.definitions[name]:
                raise LandscapeError(
                    f"{first.name} and {run.name} hold different versions of the {name} measure "
                    f"({first.definitions[name].split(':')[0]} vs "
                    f"{run.definitions[name].split(':')[0]}); re-run landscape analyze"
                )
        data_a, data_b = first.config.get("data"), run.config.get("data")
        if data_a != data_b:
            raise LandscapeError(f"{first.name} and {run.name} trained on different data")


def run_means(run: RunRecord, kind: str) -> dict[str, float]:
    """Each measure averaged over the run's members of ``kind`` (the run is the unit)."""
    members = [m for m, k in run.kinds.items() if k == kind]
    out = {}
    for measure in compare_fields():
        vals = [run.values[m][measure] for m in members if measure in run.values.get(m, {})]
        if vals:
            out[measure] = sum(vals) / len(vals)
    return out
