"""``landscape compare``: statistics over analysed runs, and verdicts in plain words.

Per method and member kind, every measure over runs (mean, sd, n, Student-t 95% interval; the
geometric mean for positive measures). Paired contrasts of the reference method (OKDPH) against
each other method on the seeds both have: ratio (positive measures) or difference, t interval,
exact sign-flip permutation p, effect size, minimum detectable effect; against a method with
averaged members (SWA, EMA: kind ``average``) also its averages, as exploratory contrasts labelled
``<method> (average)``. The primary family
(declared in study.json ``primary: {measures, baselines}``, default: lambda_max, trace and
worst-case sharpness of the students, against every other method that is not a variant of the
reference) is Holm-adjusted; every other contrast is exploratory
(Benjamini-Hochberg). Kendall's tau says whether flatness tracks generalisation over runs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from landscape.core.errors import LandscapeError
from landscape.study import stats
from landscape.study.collect import RunRecord, check_comparable, compare_fields, run_means

KINDS = ("students", "pruned", "hybrid", "average", "ensemble")
PRIMARY_MEASURES = ("lambda_max", "trace", "sharpness_worst")
#: What flatness is meant to predict: the targets of the rank correlations.
TARGETS = ("gap_accuracy", "gap_loss", "test_acc")
# Smallest effects worth reporting: a ratio for positive measures, a difference otherwise.
DEFAULT_RELEVANCE = {"log": 1.10, "test_acc": 0.01, "gap_accuracy": 0.01, "default": 0.05}


def relevance(measure: str, declared: dict[str, float]) -> float:
    """The declared relevance threshold of ``measure`` (study.json ``relevance``) or ours."""
    if measure in declared:
        return float(declared[measure])
    if compare_fields()[measure].log:
        return DEFAULT_RELEVANCE["log"]
    return DEFAULT_RELEVANCE.get(measure, DEFAULT_RELEVANCE["default"])


def reported_accuracies(
    runs: list[RunRecord], means: dict[tuple[str, int, str], dict[str, float]]
) -> dict[str, dict[str, Any]]:
    """Per method: the accuracy as the OKDPH reference code reports it (best over the tested
    epochs and every network, :func:`landscape.study.collect.reported_accuracy`) beside the
    students' last-epoch accuracy, and their difference per run (the size of the selection on
    the test set), each summarised over runs with its 95% interval."""
    out: dict[str, dict[str, Any]] = {}
    for method in sorted({r.method for r in runs}):
        best, last, selection, epochs = [], [], [], set()
        for r in runs:
            students = means[(r.method, r.seed, "students")].get("test_acc")
            if r.method != method or not r.reported or students is None:
                continue
            best.append(r.reported["value"])
            last.append(students)
            selection.append(r.reported["value"] - students)
            epochs.update(r.reported["epochs"])
        if best:
            out[method] = {
                "best_over_epochs_and_networks": asdict(stats.describe(best)),
                "students_last_epoch": asdict(stats.describe(last)),
                "selection": asdict(stats.describe(selection)),
                "epochs_tested": sorted(epochs),
            }
    return out


def compare_runs(
    runs: list[RunRecord],
    *,
    reference: str | None = None,
    study: dict[str, Any] | None = None,
    max_train_error: float = 0.01,
) -> dict[str, Any]:
    """The whole comparison as a JSON-ready dict (see the module docstring)."""
    if not runs:
        raise LandscapeError("nothing to compare: no analysed runs")
    check_comparable(runs)
    study = study or {}
    methods = sorted({r.method for r in runs})
    reference = reference or next((m for m in methods if m.startswith("okdph")), methods[0])
    if reference not in methods:
        raise LandscapeError(f"reference method {reference!r} is not among {', '.join(methods)}")
    fields = compare_fields()
    means = {(r.method, r.seed, kind): run_means(r, kind) for r in runs for kind in KINDS}
    table: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for method in methods:
        for kind in KINDS:
            for measure, f in fields.items():
                vals = [
                    v
                    for r in runs
                    if r.method == method
                    and (v := means[(r.method, r.seed, kind)].get(measure)) is not None
                ]
                if vals:
                    table[method][kind][measure] = asdict(stats.describe(vals, log=f.log))
    primary = study.get("primary", {})
    primary_measures = tuple(primary.get("measures", PRIMARY_MEASURES))
    declared = study.get("relevance", {})
    # Baselines are the other methods; variants of the reference method (its ablations, e.g.
    # okdph-mode_code) are contrasted too, but in the exploratory family unless declared.
    base = reference.split("-")[0]
    contrasts = []
    for other in (m for m in methods if m != reference):
        ablation = other.split("-")[0] == base
        # The reference's students against the other's students and, for a flat-minima control
        # whose product is an averaged member (SWA, EMA), against that member (exploratory).
        for kind in ("students", "average"):
            for measure in (name for name, f in fields.items() if f.contrast):
                a = _by_seed(runs, means, reference, measure)
                b = _by_seed(runs, means, other, measure, kind)
                c = stats.paired_contrast(a, b, log=fields[measure].log)
                if c.n == 0:
                    continue
                primary_pair = kind == "students" and (
                    other in primary.get("baselines", [])
                    or ("baselines" not in primary and not ablation)
                )
                family = (
                    "primary" if measure in primary_measures and primary_pair else "exploratory"
                )
                contrasts.append(
                    {
                        "a": reference,
                        "b": other if kind == "students" else f"{other} ({kind})",
                        "measure": measure,
                        "kind": kind,
                        "family": family,
                        **asdict(c),
                    }
                )
    for family, adjust in (("primary", stats.holm), ("exploratory", stats.benjamini_hochberg)):
        members = [row for row in contrasts if row["family"] == family and math.isfinite(row["p"])]
        for row, p in zip(members, adjust([row["p"] for row in members]), strict=True):
            row["p_adj"] = p
    for row in contrasts:
        row.setdefault("p_adj", math.nan)
        row["relevance"] = relevance(row["measure"], declared)
        row["verdict"] = verdict(row)
    reported = reported_accuracies(runs, means)
    correlations = _correlations(runs, means, max_train_error)
    correlation_note = _why_no_correlation(runs, means, max_train_error, correlations)
    tracking = tracking_bands(runs)
    caveats = _caveats(methods, runs)
    if "primary" in study and not primary_measures:
        caveats.append(
            "the declared primary family is empty (no flatness measure validated on this "
            "problem): every contrast is exploratory, and none is a confirmatory finding"
        )
    return {
        "reference": reference,
        "methods": {m: {k: dict(v) for k, v in table[m].items()} for m in methods},
        "runs": [
            {"name": r.name, "method": r.method, "seed": r.seed, "epoch": r.epoch} for r in runs
        ],
        "contrasts": contrasts,
        "reported_accuracy": reported,
        "correlations": correlations,
        "correlation_note": correlation_note,
        "tracking": tracking,
        "verdicts": [c["verdict"] for c in contrasts if c["family"] == "primary"]
        + [c["verdict"] for c in contrasts if c["family"] != "primary"],
        "caveats": caveats,
        "invariant_to_rescaling": {m: f.invariant for m, f in fields.items()},
        "settings": runs[0].settings,
        "definitions": runs[0].definitions,
    }


def tracking_bands(runs: Sequence[RunRecord]) -> dict[str, Any]:
    """Per method, the tracked top eigenvalue of its students against the epoch: at each epoch
    every run's students' mean is one value, summarised over runs (geometric mean and t
    interval, n), with the runs' mean stability threshold; ``{}`` when no run tracked."""
    out: dict[str, Any] = {}
    for method in sorted({r.method for r in runs}):
        per_epoch: dict[float, list[float]] = defaultdict(list)
        thresholds: dict[float, list[float]] = defaultdict(list)
        for r in runs:
            if r.method != method or not r.tracking.get("members"):
                continue
            students = [s for m, s in r.tracking["members"].items() if r.kinds.get(m) == "students"]
            if not students:
                continue
            for i, epoch in enumerate(students[0]["epoch"]):
                vals = [s["lambda_max"][i] for s in students if s["lambda_max"][i] is not None]
                if vals:
                    per_epoch[epoch].append(sum(vals) / len(vals))
                if students[0]["threshold"][i] is not None:
                    thresholds[epoch].append(students[0]["threshold"][i])
        if not per_epoch:
            continue
        epochs = sorted(per_epoch)
        described = [stats.describe(per_epoch[e], log=True) for e in epochs]
        out[method] = {
            "epoch": epochs,
            "mean": [d.mean for d in described],
            "ci_low": [d.ci_low for d in described],
            "ci_high": [d.ci_high for d in described],
            "n": [d.n for d in described],
            "threshold": [
                sum(thresholds[e]) / len(thresholds[e]) if thresholds[e] else None for e in epochs
            ],
        }
    return out


def _by_seed(
    runs: Sequence[RunRecord], means: dict, method: str, measure: str, kind: str = "students"
) -> dict[int, float]:
    return {
        r.seed: means[(r.method, r.seed, kind)][measure]
        for r in runs
        if r.method == method and measure in means[(r.method, r.seed, kind)]
    }


def verdict(c: dict[str, Any]) -> str:
    """One sentence: the estimate, its interval and test, and what it allows one to say."""
    log, n = c["log"], c["n"]
    rel = c["relevance"]
    if log:
        size = f"{c['estimate']:.3g}x {c['b']}'s [{c['ci_low']:.3g}, {c['ci_high']:.3g}]"
        null, mde, band = 1.0, f"{c['mde']:.3g}x", (1 / rel, rel)
    else:
        size = f"{c['estimate']:+.3g} vs {c['b']} [{c['ci_low']:+.3g}, {c['ci_high']:+.3g}]"
        null, mde, band = 0.0, f"{c['mde']:.3g}", (-rel, rel)
    # "No difference" needs the whole interval inside the relevance band (equivalence), and
    # enough power: the detectable effect below the threshold.
    small = (
        math.isfinite(c["ci_low"])
        and band[0] <= c["ci_low"]
        and c["ci_high"] <= band[1]
        and math.isfinite(c["mde"])
        and (max(c["mde"], 1 / c["mde"]) if log else c["mde"]) <= rel
    )
    p = f"p={c['p']:.3g}" if math.isfinite(c["p"]) else "no test"
    adj = "Holm" if c["family"] == "primary" else "BH"
    p_adj = f", {adj} p={c['p_adj']:.3g}" if math.isfinite(c["p_adj"]) else ""
    text = f"{c['a']}'s {c['measure']} is {size} ({p}{p_adj}, n={n}, {c['family']})"
    excludes = math.isfinite(c["ci_low"]) and not c["ci_low"] <= null <= c["ci_high"]
    significant = math.isfinite(c["p_adj"]) and c["p_adj"] < 0.05
    if excludes and significant:
        word = "higher" if c["estimate"] > null else "lower"
        return f"{text}: {word}."
    if small:
        return f"{text}: no difference larger than {rel:g} (detectable: {mde})."
    if excludes:
        floor = 2 / 2**n if n <= 13 else 1 / 10000
        return (
            f"{text}: inconclusive at n={n}: the interval excludes no difference but the "
            f"adjusted p does not reach 0.05 (the smallest two-sided sign-flip p at n={n} is "
            f"{floor:.2g}; more seeds or a smaller primary family)."
        )
    return f"{text}: inconclusive at n={n} (detectable at 80% power: {mde})."


def _correlations(runs: list[RunRecord], means: dict, max_train_error: float) -> list[dict]:
    """Kendall's tau of each flatness measure against each target over the runs' students,
    keeping runs whose students fit the training set (train error <= max_train_error)."""
    kept = [
        means[(r.method, r.seed, "students")]
        for r in runs
        if 1 - means[(r.method, r.seed, "students")].get("train_acc", 0.0) <= max_train_error
    ]
    out = []
    flatness = [name for name, f in compare_fields().items() if f.correlate]
    for measure in flatness:
        for target in TARGETS:
            pairs = [(m[measure], m[target]) for m in kept if measure in m and target in m]
            if not pairs:
                continue
            x, y = zip(*pairs, strict=True)
            corr = stats.kendall(list(x), list(y))
            out.append(
                {
                    "measure": measure,
                    "target": target,
                    **asdict(corr),
                    "runs_kept": len(kept),
                    "runs": len(runs),
                    "max_train_error": max_train_error,
                }
            )
    return out


#: Kendall's tau needs this many runs (fewer give no tau; see ``stats.kendall``).
MIN_CORRELATION_RUNS = 3


def _why_no_correlation(
    runs: list[RunRecord], means: dict, max_train_error: float, correlations: list[dict]
) -> str | None:
    """Why no Kendall's tau could be computed, in one sentence (``None`` when one was)."""
    if any(c["n"] >= MIN_CORRELATION_RUNS for c in correlations):
        return None
    students = [means[(r.method, r.seed, "students")] for r in runs]
    flatness = [name for name, f in compare_fields().items() if f.correlate]
    if not any("train_acc" in m for m in students):
        return (
            "no run holds the fit analysis (training accuracy and generalisation gaps): "
            "analyse the runs with fit among --analyses"
        )
    if not any(name in m for m in students for name in flatness):
        return (
            f"no run holds a flatness measure to correlate ({', '.join(flatness)}): analyse the "
            "runs with eigen, trace or sharpness among --analyses"
        )
    kept = sum(1 for m in students if 1 - m.get("train_acc", 0.0) <= max_train_error)
    if kept == 0:
        return (
            f"no run's students fit their training set (train error <= {max_train_error:g}, "
            f"0 of {len(runs)} runs); train longer or raise --max-train-error"
        )
    return (
        f"Kendall's tau needs at least {MIN_CORRELATION_RUNS} runs whose students fit their "
        f"training set (train error <= {max_train_error:g}), and {kept} of {len(runs)} do"
    )


def _caveats(methods: list[str], runs: list[RunRecord]) -> list[str]:
    notes = []
    paper = [
        r
        for r in runs
        if r.method.startswith("okdph")
        and r.config.get("method_args", {}).get("mode", "paper") == "paper"
    ]
    # About the student-student barrier: said only where one was measured (interp).
    barriers = any("barrier_students" in v for r in paper for v in r.values.values())
    if barriers:
        notes.append(
            "paper-mode OKDPH trains on random points of its students' simplex, so a low "
            "student-student barrier is part of its objective, not a finding about flatness"
        )
    if any(k == "pruned" for r in runs for k in r.kinds.values()):
        notes.append(
            "members narrower than the run's architecture (WML's pruned heads) are "
            "reported as 'pruned', apart from full-width students"
        )
    notes.append(
        "lambda_max and trace change when a layer's filters are rescaled (Dinh et al. "
        "2017); adaptive sharpness does not"
    )
    return notes


def load_runs(paths: Sequence[Path]) -> tuple[dict[str, Any] | None, list[RunRecord]]:
    """A study directory (its study.json's runs, with their method labels) or a list of runs."""
    from landscape.study.collect import load_run, study_runs

    if len(paths) == 1:
        study, listed = study_runs(paths[0])
        if study is not None:
            return study, [load_run(p, label) for p, label in listed]
    return None, [load_run(p) for p in paths]
