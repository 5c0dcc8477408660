"""Statistics over runs: intervals, paired contrasts, multiplicity, rank correlation.

The unit is the run (one seed): callers average a run's students before calling these. Every
test and interval comes from :mod:`scipy.stats`; positive measures (curvatures, sharpness) are
compared on the log scale and reported as ratios.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
POWER = 0.8
BOOTSTRAP_MIN_N = 10  # resampling runs only pays with enough of them


@dataclass(frozen=True)
class Described:
    """Mean, sd, n and a Student-t interval of one measure over runs (on the log scale and
    transformed back, i.e. the geometric mean, when ``log``)."""

    mean: float
    sd: float
    n: int
    ci_low: float
    ci_high: float
    log: bool
    values: tuple[float, ...]


def describe(values: Sequence[float], log: bool = False) -> Described:
    """Summary of ``values`` (NaNs dropped); the interval is NaN below two values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if log:
        x = x[x > 0]
    z = np.log(x) if log else x
    n = len(z)
    mean = float(z.mean()) if n else math.nan
    sd = float(z.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and sd == 0.0:
        lo = hi = mean
    elif n > 1:
        lo, hi = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=sd / math.sqrt(n))
    else:
        lo = hi = math.nan
    back = math.exp if log else float
    return Described(
        mean=back(mean) if n else math.nan,
        sd=sd,
        n=n,
        ci_low=back(lo) if n > 1 else math.nan,
        ci_high=back(hi) if n > 1 else math.nan,
        log=log,
        values=tuple(float(v) for v in x),
    )


@dataclass(frozen=True)
class Contrast:
    """A paired comparison of ``a`` against ``b`` over the seeds both have.

    Attributes:
        estimate: mean ratio ``a / b`` (geometric, when ``log``) or mean difference ``a - b``.
        ci_low, ci_high: Student-t 95% interval of ``estimate``.
        p: two-sided p-value of the exact sign-flip permutation test of the paired differences
            (all ``2^n`` sign patterns up to n = 13; 9999 random ones beyond).
        effect_size: Cohen's d_z, mean paired difference over its sd (log scale when ``log``).
        mde: minimum detectable effect at 80% power and alpha 0.05 given the observed sd and n,
            as a ratio (``log``) or a difference.
        n: number of pairs; ``seeds``: which.
    """

    estimate: float
    ci_low: float
    ci_high: float
    p: float
    effect_size: float
    mde: float
    n: int
    log: bool
    seeds: tuple[int, ...]


def paired_contrast(a: dict[int, float], b: dict[int, float], log: bool = False) -> Contrast:
    """Compare ``a`` and ``b`` (``{seed: value}``) on the seeds both have."""
    seeds = tuple(sorted(s for s in a if s in b and _usable(a[s], log) and _usable(b[s], log)))
    x = np.array([a[s] for s in seeds], float)
    y = np.array([b[s] for s in seeds], float)
    d = np.log(x) - np.log(y) if log else x - y
    n = len(d)
    back = np.exp if log else (lambda v: v)
    if n < 2:
        est = float(back(d.mean())) if n else math.nan
        return Contrast(est, math.nan, math.nan, math.nan, math.nan, math.nan, n, log, seeds)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        lo = hi = mean
    else:
        lo, hi = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=sd / math.sqrt(n))
    p = sign_flip_p(d)
    t_crit = stats.t.ppf(1 - (1 - CONFIDENCE) / 2, n - 1) + stats.t.ppf(POWER, n - 1)
    mde = t_crit * sd / math.sqrt(n)
    return Contrast(
        estimate=float(back(mean)),
        ci_low=float(back(lo)),
        ci_high=float(back(hi)),
        p=p,
        effect_size=mean / sd if sd > 0 else math.copysign(math.inf, mean) if mean else 0.0,
        mde=float(back(mde)),
        n=n,
        log=log,
        seeds=seeds,
    )


def _usable(v: float | None, log: bool) -> bool:
    return v is not None and math.isfinite(v) and (v > 0 or not log)


def sign_flip_p(d: np.ndarray) -> float:
    """Two-sided p of the paired sign-flip permutation test of mean(d) = 0 (scipy)."""
    if np.all(d == 0):
        return 1.0
    res = stats.permutation_test(
        (d,),
        np.mean,
        permutation_type="samples",
        alternative="two-sided",
        n_resamples=9999,
        random_state=np.random.default_rng(0),
    )
    return float(res.pvalue)


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    values = np.asarray(p, float)
    m = len(values)
    order = np.argsort(values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * values[i])
        adjusted[i] = min(1.0, running)
    return adjusted.tolist()


def benjamini_hochberg(p: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), scipy's."""
    if len(p) == 0:
        return []
    return stats.false_discovery_control(np.asarray(p, float), method="bh").tolist()


@dataclass(frozen=True)
class Correlation:
    """Kendall's tau between a measure and a target over runs, with a bootstrap interval over
    runs (NaN below ``BOOTSTRAP_MIN_N`` runs) and the test's p-value."""

    tau: float
    p: float
    ci_low: float
    ci_high: float
    n: int


def kendall(x: Sequence[float], y: Sequence[float], seed: int = 0) -> Correlation:
    """Kendall's tau-b of paired ``x`` and ``y`` (non-finite pairs dropped)."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    n = len(pairs)
    if n < 3:
        return Correlation(math.nan, math.nan, math.nan, math.nan, n)
    xs, ys = (np.array(v, float) for v in zip(*pairs, strict=True))
    res = stats.kendalltau(xs, ys)
    lo = hi = math.nan
    if n >= BOOTSTRAP_MIN_N:
        boot = stats.bootstrap(
            (xs, ys),
            lambda a, b: stats.kendalltau(a, b).statistic,
            paired=True,
            vectorized=False,
            n_resamples=999,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        lo, hi = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return Correlation(float(res.statistic), float(res.pvalue), lo, hi, n)
