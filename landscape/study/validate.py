"""``landscape validate``: which flatness measure predicts generalisation on this problem.

A study whose grid varies training hyperparameters (``okdph sweep --vary``; several methods are an
axis too) with at least two seeds per configuration is a small version of the experiments of
Jiang et al. 2020 ("Fantastic generalization measures and where to find them") and Dziugaite et
al. 2020 ("In search of robust measures of generalization"). For every measure the analysis holds
(the registry's ``correlate`` fields, oriented as complexities: higher = sharper, and the
baselines weight norm, inverse margin and mean confidence) and every generalisation gap, this
module computes

1. Kendall's tau-b over runs, with a percentile bootstrap interval that resamples configurations
   (all seeds of a drawn configuration together), over all runs and over the runs that fit their
   training set;
2. Jiang et al.'s granulated tau: per axis the mean tau within groups of configurations that
   differ only along that axis (``psi``), and their mean ``Psi``;
3. Dziugaite et al.'s sign-error over pairs of configurations that differ in one hyperparameter,
   counting only pairs whose gap difference exceeds the noise floor of the seeds, with its
   quantiles over environments and its worst case;
4. the measure's seed-to-seed noise relative to its spread over the grid;

and judges each measure by a criterion declared before looking (study.json ``validate``).

Everything here is a pure function of a tidy :class:`Table` (one row per run: its configuration,
seed and the run's students' means); reading runs and writing files live elsewhere
(:mod:`landscape.study.validate_outputs`). Random numbers come from a seed argument only.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from landscape.core.errors import LandscapeError
from landscape.measures.base import Field
from landscape.study.collect import RunRecord, check_comparable, compare_fields, run_means

#: The generalisation gaps a measure should predict (fit: whole train split vs test, eval mode).
TARGETS = ("gap_accuracy", "gap_loss")
#: Baselines every flatness measure should beat (fit records them), as complexities.
BASELINES = ("weight_norm", "inverse_margin", "mean_confidence")
#: The run value that decides whether a run fits its training set.
TRAIN_ACCURACY = "train_acc"
#: Name of the axis formed by the study's method entries when it lists several.
METHOD_AXIS = "method"
QUANTILES = (0.5, 0.9)
CONFIDENCE = 0.95
#: Keys of study.json ``validate`` (the pre-declared criterion) and their defaults.
CRITERION_KEYS = ("psi", "tau_ci_low", "sign_error", "target")


# --------------------------------------------------------------------------------------------
# The tidy table


@dataclass(frozen=True)
class Row:
    """One run: its name, seed, configuration (its value on every axis, in the table's axis
    order) and values ``{measure or target: the run's students' mean}``."""

    run: str
    seed: int
    config: tuple[str, ...]
    values: Mapping[str, float]


@dataclass(frozen=True)
class Table:
    """Runs of a grid: ``axes`` maps each axis to its values in grid order; ``rows`` the runs."""

    axes: Mapping[str, tuple[str, ...]]
    rows: tuple[Row, ...]

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(self.axes)


def configurations(table: Table) -> dict[tuple[str, ...], list[Row]]:
    """The table's runs grouped by configuration, configurations in grid order."""
    groups: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for row in table.rows:
        groups[row.config].append(row)
    return dict(sorted(groups.items(), key=lambda kv: _grid_position(table, kv[0])))


def _grid_position(table: Table, config: tuple[str, ...]) -> tuple[int, ...]:
    out = []
    for value, levels in zip(config, table.axes.values(), strict=True):
        out.append(levels.index(value) if value in levels else len(levels))
    return tuple(out)


def describe_config(table: Table, config: tuple[str, ...]) -> str:
    """``"optim.lr=0.1, batch_size=32"``."""
    return ", ".join(f"{a}={v}" for a, v in zip(table.axes, config, strict=True))


def check_design(table: Table) -> None:
    """Refuse, in one sentence, a table without a hyperparameter axis or with one seed in a
    configuration (seed noise could not be told from a hyperparameter's effect)."""
    if not table.axes:
        raise LandscapeError(
            "the study varies no training hyperparameter (one method and no --vary axis with "
            "two values or more), so there is nothing to validate a measure against; sweep "
            "with --vary key=v1,v2"
        )
    groups = configurations(table)
    single = [c for c, rows in groups.items() if len(rows) < 2]
    if single and len(single) == len(groups):
        raise LandscapeError(
            "every configuration of the study has one seed, so seed noise cannot be told from a "
            "hyperparameter's effect; sweep with at least two seeds (--seeds 0,1)"
        )
    if single:
        raise LandscapeError(
            f"configuration {describe_config(table, single[0])} has one seed ({len(single)} of "
            f"{len(groups)} configurations do), so its seed noise is unknown; validation needs "
            "at least two seeds per configuration"
        )


def _value(row: Row, key: str, log: bool) -> float:
    """The row's ``key`` (on the log scale when ``log``), NaN when missing or unusable."""
    v = row.values.get(key)
    if v is None or isinstance(v, bool) or not math.isfinite(v):
        return math.nan
    if log:
        return math.log(v) if v > 0 else math.nan
    return float(v)


def _finite(values: Iterable[float]) -> np.ndarray:
    a = np.asarray(list(values), float)
    return a[np.isfinite(a)]


def config_means(table: Table, key: str, log: bool = False) -> dict[tuple[str, ...], float]:
    """Per configuration, the mean of ``key`` over its seeds (on the log scale, i.e. the log of
    the geometric mean, when ``log``); NaN when no seed holds it."""
    out = {}
    for config, rows in configurations(table).items():
        v = _finite(_value(r, key, log) for r in rows)
        out[config] = float(v.mean()) if len(v) else math.nan
    return out


def config_counts(table: Table, key: str) -> dict[tuple[str, ...], int]:
    """Per configuration, how many seeds hold a finite ``key``."""
    return {
        c: len(_finite(_value(r, key, False) for r in rows))
        for c, rows in configurations(table).items()
    }


# --------------------------------------------------------------------------------------------
# 1. Kendall's tau over runs, bootstrap over configurations


def tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (scipy) of paired values; 0 when either side is constant (the measure
    orders nothing, or there is no order to predict), NaN below two pairs."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    if len(xs) < 2:
        return math.nan
    if np.all(xs == xs[0]) or np.all(ys == ys[0]):
        return 0.0
    return float(stats.kendalltau(xs, ys).statistic)


def cluster_bootstrap(
    x: Sequence[float],
    y: Sequence[float],
    clusters: Sequence[Any],
    *,
    n_resamples: int,
    seed: int | Sequence[int],
    confidence: float = CONFIDENCE,
) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap interval of :func:`tau_b` that resamples clusters (configurations):
    each resample draws as many clusters as there are, with replacement, and keeps all their
    points. Returns ``(low, high, the bootstrap distribution)``; NaNs below two clusters."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    labels = list(dict.fromkeys(clusters))
    members = [np.flatnonzero([c == label for c in clusters]) for label in labels]
    if len(members) < 2 or n_resamples < 1:
        return math.nan, math.nan, np.empty(0)

    def statistic(drawn: np.ndarray) -> float:
        take = np.concatenate([members[int(i)] for i in drawn])
        return tau_b(xs[take], ys[take])

    res = stats.bootstrap(
        (np.arange(len(members)),),
        statistic,
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    dist = np.asarray(res.bootstrap_distribution, float)
    return float(res.confidence_interval.low), float(res.confidence_interval.high), dist


def kendall_runs(
    table: Table,
    measure: str,
    target: str,
    *,
    n_resamples: int,
    seed: int | Sequence[int],
    keep: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Kendall's tau-b of ``measure`` against ``target`` over the table's runs (those named in
    ``keep`` when given), its p-value, and the bootstrap interval over configurations."""
    kept = set(keep) if keep is not None else None
    pairs = [
        (_value(r, measure, False), _value(r, target, False), r.config)
        for r in table.rows
        if kept is None or r.run in kept
    ]
    pairs = [p for p in pairs if math.isfinite(p[0]) and math.isfinite(p[1])]
    n = len(pairs)
    n_configs = len({p[2] for p in pairs})
    out: dict[str, Any] = {
        "tau": math.nan,
        "p": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "n_runs": n,
        "n_configurations": n_configs,
        "constant": False,
    }
    if n < 2:
        return out
    x = [p[0] for p in pairs]
    y = [p[1] for p in pairs]
    out["tau"] = tau_b(x, y)
    out["constant"] = len(set(x)) == 1 or len(set(y)) == 1
    if not out["constant"]:
        out["p"] = float(stats.kendalltau(x, y).pvalue)
    lo, hi, _ = cluster_bootstrap(x, y, [p[2] for p in pairs], n_resamples=n_resamples, seed=seed)
    out["ci_low"], out["ci_high"] = lo, hi
    return out


# --------------------------------------------------------------------------------------------
# 2. Granulated tau (Jiang et al. 2020)


def _groups_along(table: Table, axis: int) -> dict[tuple[str, ...], list[tuple[str, ...]]]:
    """Configurations grouped by their values on every axis but ``axis`` (grid order)."""
    groups: dict[tuple[str, ...], list[tuple[str, ...]]] = defaultdict(list)
    for config in configurations(table):
        groups[config[:axis] + config[axis + 1 :]].append(config)
    return dict(groups)


def granulated_tau(table: Table, measure: str, target: str, log: bool = False) -> dict[str, Any]:
    """Per axis, ``psi``: the mean :func:`tau_b` of configuration means (seeds averaged) within
    each group of configurations that differ only along that axis; a group with fewer than two
    configurations holding both values has no tau and is skipped. ``Psi`` is the mean of the
    axes' psi (axes without a counted group left out)."""
    m = config_means(table, measure, log)
    g = config_means(table, target)
    axes: dict[str, Any] = {}
    for i, axis in enumerate(table.axes):
        taus, skipped = [], 0
        for configs in _groups_along(table, i).values():
            usable = [c for c in configs if math.isfinite(m[c]) and math.isfinite(g[c])]
            if len(usable) < 2:
                skipped += 1
                continue
            taus.append(tau_b([m[c] for c in usable], [g[c] for c in usable]))
        axes[axis] = {
            "psi": float(np.mean(taus)) if taus else math.nan,
            "groups": len(taus),
            "skipped": skipped,
            "taus": taus,
        }
    psis = [a["psi"] for a in axes.values() if math.isfinite(a["psi"])]
    return {"axes": axes, "Psi": float(np.mean(psis)) if psis else math.nan, "n_axes": len(psis)}


# --------------------------------------------------------------------------------------------
# 3. Robust sign-error (Dziugaite et al. 2020)


def pooled_variance(table: Table, key: str, log: bool = False) -> tuple[float, int]:
    """``(s2, df)``: the within-configuration variance of ``key`` pooled over configurations,
    sum of squared deviations from each configuration's mean over sum of (n_c - 1)."""
    ss, df = 0.0, 0
    for rows in configurations(table).values():
        v = _finite(_value(r, key, log) for r in rows)
        if len(v) >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            df += len(v) - 1
    return (ss / df if df else math.nan), df


def pair_sign_error(d_measure: float, d_gap: float) -> float:
    """0 when the measure orders the pair as the gap does, 1 when the other way, 1/2 on a tie in
    the measure (Dziugaite et al.'s ``(1 - sign(dm) sign(dg)) / 2``)."""
    return (1.0 - float(np.sign(d_measure) * np.sign(d_gap))) / 2.0


def sign_errors(table: Table, measure: str, target: str, log: bool = False) -> dict[str, Any]:
    """Sign-errors of ``measure`` against ``target`` over pairs of configurations that differ
    in exactly one axis.

    The noise floor of a pair is the standard deviation of a difference of two configuration
    means, ``sqrt(s2 / n_a + s2 / n_b)`` with ``s2`` the pooled within-configuration variance of
    the target; only pairs whose gap difference exceeds it are counted. An environment is an
    axis and a pair of its values (all the pairs that change that axis between those values);
    its sign-error is the mean over its counted pairs. Returns the mean over counted pairs, the
    quantiles over environments, and the worst environment among those whose mean absolute gap
    difference exceeds twice their (mean) floor.
    """
    s2, df = pooled_variance(table, target)
    m = config_means(table, measure, log)
    g = config_means(table, target)
    n = config_counts(table, target)
    envs: dict[tuple[str, str, str], dict[str, Any]] = {}
    errors: list[float] = []
    n_pairs = 0
    for i, axis in enumerate(table.axes):
        levels = table.axes[axis]
        for configs in _groups_along(table, i).values():
            for a, b in itertools.combinations(configs, 2):
                if not (math.isfinite(g[a]) and math.isfinite(g[b])):
                    continue
                if levels.index(a[i]) > levels.index(b[i]):
                    a, b = b, a
                env = envs.setdefault(
                    (axis, a[i], b[i]), {"gaps": [], "floors": [], "errors": [], "pairs": 0}
                )
                d_gap = g[a] - g[b]
                floor = math.sqrt(s2 / n[a] + s2 / n[b]) if math.isfinite(s2) else math.nan
                env["gaps"].append(abs(d_gap))
                env["floors"].append(floor)
                env["pairs"] += 1
                n_pairs += 1
                if not (math.isfinite(m[a]) and math.isfinite(m[b])):
                    continue
                if math.isfinite(floor) and abs(d_gap) > floor:
                    e = pair_sign_error(m[a] - m[b], d_gap)
                    env["errors"].append(e)
                    errors.append(e)
    environments = []
    for (axis, va, vb), env in envs.items():
        mean_gap = float(np.mean(env["gaps"]))
        floor = float(np.mean(env["floors"]))
        environments.append(
            {
                "axis": axis,
                "values": [va, vb],
                "pairs": env["pairs"],
                "pairs_counted": len(env["errors"]),
                "mean_abs_gap_difference": mean_gap,
                "floor": floor,
                "qualifies": bool(math.isfinite(floor) and mean_gap > 2 * floor),
                "sign_error": float(np.mean(env["errors"])) if env["errors"] else math.nan,
            }
        )
    scored = [e["sign_error"] for e in environments if math.isfinite(e["sign_error"])]
    worst = max(
        (e for e in environments if e["qualifies"] and math.isfinite(e["sign_error"])),
        key=lambda e: e["sign_error"],
        default=None,
    )
    return {
        **noise_floor(table, target),
        "pairs": n_pairs,
        "pairs_counted": len(errors),
        "mean": float(np.mean(errors)) if errors else math.nan,
        "quantiles": {
            f"{q:g}": float(np.quantile(scored, q)) if scored else math.nan for q in QUANTILES
        },
        "worst": worst["sign_error"] if worst else math.nan,
        "worst_environment": (
            {"axis": worst["axis"], "values": worst["values"]} if worst else None
        ),
        "environments_scored": len(scored),
        "environments_qualifying": sum(e["qualifies"] for e in environments),
        "environments": environments,
    }


# --------------------------------------------------------------------------------------------
# 4. Seed noise against spread over the grid


def noise_ratio(table: Table, key: str, log: bool = False) -> dict[str, Any]:
    """``sqrt(pooled within-configuration variance) / sd of the configuration means`` of
    ``key`` (on the log scale when ``log``): near or above 1, the grid moves the value no more
    than the seed does."""
    s2, df = pooled_variance(table, key, log)
    means = _finite(config_means(table, key, log).values())
    between = float(means.std(ddof=1)) if len(means) >= 2 else math.nan
    within = math.sqrt(s2) if math.isfinite(s2) else math.nan
    if math.isfinite(within) and math.isfinite(between):
        ratio = within / between if between > 0 else (math.inf if within > 0 else math.nan)
    else:
        ratio = math.nan
    return {
        "within_sd": within,
        "between_sd": between,
        "ratio": ratio,
        "df": df,
        "scale": "log" if log else "linear",
    }


# --------------------------------------------------------------------------------------------
# The criterion


@dataclass(frozen=True)
class Criterion:
    """The pre-declared rule (study.json ``validate``): a measure validates against ``target``
    when ``Psi >= psi``, the lower end of the bootstrap interval of tau over all runs is above
    ``tau_ci_low``, and the mean robust sign-error is below ``sign_error``."""

    psi: float = 0.2
    tau_ci_low: float = 0.0
    sign_error: float = 0.4
    target: str = "gap_accuracy"

    @classmethod
    def from_study(cls, study: Mapping[str, Any] | None) -> Criterion:
        """The study's declared criterion (defaults for what it leaves out)."""
        declared = (study or {}).get("validate")
        if declared is None:
            return cls()
        if not isinstance(declared, Mapping):
            raise LandscapeError(
                'study.json "validate" must be an object like {"psi": 0.2, "tau_ci_low": 0.0, '
                '"sign_error": 0.4, "target": "gap_accuracy"}'
            )
        unknown = sorted(set(declared) - set(CRITERION_KEYS))
        if unknown:
            raise LandscapeError(
                f'study.json "validate" has unknown key {unknown[0]!r}; the keys are '
                f"{', '.join(CRITERION_KEYS)}"
            )
        values: dict[str, Any] = {}
        for key in ("psi", "tau_ci_low", "sign_error"):
            if key in declared:
                v = declared[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise LandscapeError(f'study.json "validate" {key} must be a number, not {v!r}')
                values[key] = float(v)
        if "target" in declared:
            if declared["target"] not in TARGETS:
                raise LandscapeError(
                    f'study.json "validate" target must be one of {", ".join(TARGETS)}, not '
                    f"{declared['target']!r}"
                )
            values["target"] = declared["target"]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return (
            f"a measure validates against {self.target} when Psi >= {self.psi:g}, the lower end "
            f"of the 95% bootstrap interval of Kendall's tau over all runs > {self.tau_ci_low:g}, "
            f"and the mean robust sign-error < {self.sign_error:g}"
        )

    def judge(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """Each criterion's value, threshold, margin (positive: passes by that much) and
        verdict for one measure's results against ``target``."""
        psi = result["granulated"]["Psi"]
        low = result["kendall"]["all"]["ci_low"]
        err = result["sign_error"]["mean"]
        checks = {
            "psi": _check(psi, self.psi, psi - self.psi, lambda d: d >= 0),
            "tau_ci_low": _check(low, self.tau_ci_low, low - self.tau_ci_low, lambda d: d > 0),
            "sign_error": _check(err, self.sign_error, self.sign_error - err, lambda d: d > 0),
        }
        return {
            "target": self.target,
            "checks": checks,
            "passed": sum(c["passes"] for c in checks.values()),
            "validates": all(c["passes"] for c in checks.values()),
        }


def _check(value: float, threshold: float, margin: float, ok: Any) -> dict[str, Any]:
    estimable = math.isfinite(value)
    return {
        "value": value,
        "threshold": threshold,
        "margin": margin if estimable else math.nan,
        "passes": bool(estimable and ok(margin)),
        "estimable": estimable,
    }


# --------------------------------------------------------------------------------------------
# Study -> table


def study_axes(study: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """The grid's axes: the method entries when there are several (``method``), then every
    ``--vary`` key with two values or more, each with its values in grid order."""
    axes: dict[str, tuple[str, ...]] = {}
    methods = tuple(study.get("methods", ()))
    vary = {k: tuple(str(v) for v in vs) for k, vs in study.get("vary", {}).items()}
    if len(methods) > 1:
        axes[METHOD_AXIS if METHOD_AXIS not in vary else "methods"] = methods
    for key, values in vary.items():
        if len(set(values)) >= 2:
            axes[key] = tuple(dict.fromkeys(values))
    return axes


def run_configuration(
    study: Mapping[str, Any], entry: Mapping[str, Any], axes: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """A study.json run's value on every axis: its method entry (the method with the options
    whose ``method.<option>`` overrides it carries, the most specific one), and the last override
    of each varied key."""
    out = []
    for axis in axes:
        if axis in (METHOD_AXIS, "methods") and axis not in study.get("vary", {}):
            out.append(_method_entry(study["methods"], entry))
            continue
        values = [o.split("=", 1)[1] for o in entry["overrides"] if o.split("=", 1)[0] == axis]
        if not values:
            raise LandscapeError(f"run {entry['name']} of the study has no {axis} override")
        out.append(values[-1])
    return tuple(out)


def _method_entry(methods: Sequence[str], entry: Mapping[str, Any]) -> str:
    overrides = set(entry["overrides"])
    matches = []
    for method_entry in methods:
        name, *options = method_entry.split(":")
        if name == entry["method"] and all(f"method.{o}" in overrides for o in options):
            matches.append((len(options), method_entry))
    matches.sort(reverse=True)
    if not matches or (len(matches) > 1 and matches[0][0] == matches[1][0]):
        raise LandscapeError(
            f"cannot tell which --methods entry run {entry['name']} of the study belongs to"
        )
    return matches[0][1]


def build_table(
    study: Mapping[str, Any], records: Sequence[RunRecord], kind: str = "students"
) -> Table:
    """The tidy table of a study's analysed runs: each run's configuration from study.json and
    its members of ``kind`` averaged (:func:`landscape.study.collect.run_means`)."""
    axes = study_axes(study)
    entries = {r["name"]: r for r in study["runs"]}
    rows = []
    for record in records:
        entry = entries.get(record.name)
        if entry is None:
            raise LandscapeError(f"{record.name} is not a run of the study's study.json")
        rows.append(
            Row(
                run=record.name,
                seed=int(entry["seed"]),
                config=run_configuration(study, entry, axes),
                values=run_means(record, kind),
            )
        )
    return Table(axes=axes, rows=tuple(rows))


def check_records(records: Sequence[RunRecord], axes: Mapping[str, Any]) -> None:
    """:func:`landscape.study.collect.check_comparable`, except that runs may differ in their
    data when a ``data.*`` key is an axis of the grid."""
    if not records:
        raise LandscapeError("nothing to validate: the study has no analysed runs")
    if any(a == "data" or a.startswith("data.") for a in axes):
        records = [
            dataclasses.replace(r, config={k: v for k, v in r.config.items() if k != "data"})
            for r in records
        ]
    check_comparable(list(records))


def validation_fields(fields: Mapping[str, Field] | None = None) -> dict[str, Field]:
    """The measures validated: every ``correlate`` field of the registry, then the baselines
    (``fields`` defaults to :func:`landscape.study.collect.compare_fields`)."""
    fields = compare_fields() if fields is None else fields
    out = {name: f for name, f in fields.items() if f.correlate}
    out.update({name: fields[name] for name in BASELINES if name in fields})
    return out


# --------------------------------------------------------------------------------------------
# Everything


def validate_table(
    table: Table,
    fields: Mapping[str, Field],
    *,
    criterion: Criterion | None = None,
    max_train_error: float = 0.01,
    n_resamples: int = 2000,
    seed: int = 0,
    targets: Sequence[str] = TARGETS,
) -> dict[str, Any]:
    """Every statistic of every measure in ``fields`` against every target, the criterion's
    verdicts and the ranking, as a JSON-ready dict (NaN where not estimable)."""
    check_design(table)
    criterion = criterion or Criterion()
    if criterion.target not in targets:
        raise LandscapeError(
            f"the criterion's target {criterion.target!r} is not among the targets"
        )
    groups = configurations(table)
    present = {
        name: f
        for name, f in fields.items()
        if any(math.isfinite(_value(r, name, False)) for r in table.rows)
    }
    absent = [name for name in fields if name not in present]
    missing_targets = [
        t for t in targets if not any(math.isfinite(_value(r, t, False)) for r in table.rows)
    ]
    if criterion.target in missing_targets:
        raise LandscapeError(
            f"the runs hold no {criterion.target}; analyse the study with the fit analysis "
            "(landscape analyze STUDY --analyses fit,...)"
        )
    fit_runs = [
        r.run
        for r in table.rows
        if 1 - r.values.get(TRAIN_ACCURACY, 0.0) <= max_train_error
        and math.isfinite(r.values.get(TRAIN_ACCURACY, math.nan))
    ]
    results: dict[str, dict[str, Any]] = {}
    for name, f in present.items():
        results[name] = {}
        for target in (t for t in targets if t not in missing_targets):
            results[name][target] = {
                "kendall": {
                    subset: kendall_runs(
                        table,
                        name,
                        target,
                        n_resamples=n_resamples,
                        seed=stream(seed, name, target, subset),
                        keep=keep,
                    )
                    for subset, keep in (("all", None), ("fit", fit_runs))
                },
                "granulated": granulated_tau(table, name, target, f.log),
                "sign_error": sign_errors(table, name, target, f.log),
            }
    verdicts = {name: criterion.judge(results[name][criterion.target]) for name in present}
    ranking = sorted(
        present,
        key=lambda n: (
            -verdicts[n]["validates"],
            -verdicts[n]["passed"],
            -_or(results[n][criterion.target]["granulated"]["Psi"], -math.inf),
            -_or(results[n][criterion.target]["kendall"]["all"]["ci_low"], -math.inf),
        ),
    )
    seeds = [len(rows) for rows in groups.values()]
    result = {
        "criterion": {**criterion.to_dict(), "text": criterion.describe()},
        "axes": {a: list(v) for a, v in table.axes.items()},
        "n_runs": len(table.rows),
        "n_configurations": len(groups),
        "seeds_per_configuration": {"min": min(seeds), "max": max(seeds)},
        "seeds": sorted({r.seed for r in table.rows}),
        "max_train_error": max_train_error,
        "n_fit_runs": len(fit_runs),
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "unit": "configuration"},
        "targets": [t for t in targets if t not in missing_targets],
        "measures": {
            name: {
                "log": f.log,
                "invariant": f.invariant,
                "baseline": name in BASELINES,
                "present": name in present,
            }
            for name, f in fields.items()
        },
        "absent": absent,
        "noise_floor": {t: noise_floor(table, t) for t in targets if t not in missing_targets},
        "noise": {
            **{name: noise_ratio(table, name, f.log) for name, f in present.items()},
            **{t: noise_ratio(table, t) for t in targets if t not in missing_targets},
        },
        "results": results,
        "verdicts": verdicts,
        "ranking": ranking,
        "runs": [
            {
                "name": r.run,
                "seed": r.seed,
                "config": dict(zip(table.axes, r.config, strict=True)),
                "values": {
                    k: r.values[k] for k in (*present, *targets, TRAIN_ACCURACY) if k in r.values
                },
            }
            for r in table.rows
        ],
    }
    result["paragraph"] = paragraph(result)
    return result


def _or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def stream(seed: int, *names: str) -> list[int]:
    """The bootstrap seed of one statistic: ``seed`` and a stable hash of its names, so a
    measure's interval does not depend on which other measures the analysis holds."""
    return [seed, zlib.crc32("/".join(names).encode())]


def noise_floor(table: Table, target: str) -> dict[str, Any]:
    """The pooled within-configuration variance ``s2`` of ``target`` (and its degrees of
    freedom), and the floor ``sqrt(2 s2 / n)`` for two configurations of the most common seed
    count ``n``."""
    s2, df = pooled_variance(table, target)
    n = [c for c in config_counts(table, target).values() if c]
    typical = max(set(n), key=n.count) if n else 0
    return {
        "s2": s2,
        "df": df,
        "seeds": typical,
        "floor": math.sqrt(2 * s2 / typical) if typical and math.isfinite(s2) else math.nan,
    }


def _fmt(v: float, spec: str = ".2f") -> str:
    return format(v, spec) if math.isfinite(v) else "n/a"


def reasons(verdict: Mapping[str, Any]) -> str:
    """``"Psi 0.50 >= 0.2, tau low 0.12 > 0, sign-error 0.25 < 0.4"`` (failing ones marked)."""
    c = verdict["checks"]
    parts = []
    for key, label, op, bad in (
        ("psi", "Psi", ">=", "<"),
        ("tau_ci_low", "tau low", ">", "<="),
        ("sign_error", "sign-error", "<", ">="),
    ):
        check = c[key]
        if not check["estimable"]:
            parts.append(f"{label} n/a")
        else:
            parts.append(
                f"{label} {check['value']:.2f} {op if check['passes'] else bad} "
                f"{check['threshold']:g}"
            )
    return ", ".join(parts)


def paragraph(result: Mapping[str, Any]) -> str:
    """The answer in words: which measures predict the gap on this problem and which do not,
    with n."""
    crit = result["criterion"]
    axes = ", ".join(f"{a} ({len(v)} values)" for a, v in result["axes"].items())
    seeds = result["seeds_per_configuration"]
    per = f"{seeds['min']}" if seeds["min"] == seeds["max"] else f"{seeds['min']}-{seeds['max']}"
    head = (
        f"Against {crit['target']} over {result['n_runs']} runs ({result['n_configurations']} "
        f"configurations x {per} seeds; axes: {axes}; {result['n_fit_runs']} runs fit their "
        f"training set):"
    )
    good = [m for m in result["ranking"] if result["verdicts"][m]["validates"]]
    bad = [m for m in result["ranking"] if not result["verdicts"][m]["validates"]]
    parts = [head]
    if good:
        parts.append(
            "; ".join(f"{m} predicts the gap ({reasons(result['verdicts'][m])})" for m in good)
            + "."
        )
    else:
        parts.append("no measure predicts the gap by the declared criterion.")
    if bad:
        parts.append(
            "Not validated: "
            + "; ".join(f"{m} ({reasons(result['verdicts'][m])})" for m in bad)
            + "."
        )
    if result["absent"]:
        parts.append(
            f"Not in the analysis (not measured, or undefined for every run): "
            f"{', '.join(result['absent'])}."
        )
    parts.append(f"Criterion: {crit['text']}.")
    return " ".join(parts)
