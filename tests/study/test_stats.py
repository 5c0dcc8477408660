"""The study's statistics against scipy and hand-computed references."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from landscape.study import stats
from landscape.study.compare import verdict


def test_describe_is_the_student_t_interval_and_the_geometric_mean_on_logs():
    x = [1.0, 2.0, 4.0, 3.5, 2.2]
    d = stats.describe(x)
    lo, hi = sps.t.interval(0.95, 4, loc=np.mean(x), scale=sps.sem(x))
    assert (d.mean, d.n) == (pytest.approx(np.mean(x)), 5)
    assert (d.ci_low, d.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    g = stats.describe(x, log=True)
    assert g.mean == pytest.approx(sps.gmean(x))
    lo, hi = sps.t.interval(0.95, 4, loc=np.mean(np.log(x)), scale=sps.sem(np.log(x)))
    assert (g.ci_low, g.ci_high) == (pytest.approx(math.exp(lo)), pytest.approx(math.exp(hi)))
    one = stats.describe([3.0, float("nan")])
    assert one.n == 1 and math.isnan(one.ci_low)


def _exact_sign_flip(d):
    observed = abs(np.mean(d))
    flips = [abs(np.mean(np.array(s) * d)) for s in itertools.product([1, -1], repeat=len(d))]
    return np.mean([f >= observed - 1e-12 for f in flips])


def test_paired_contrast_matches_enumeration_and_scipy():
    a = {0: 2.0, 1: 3.0, 2: 2.5, 3: 4.0, 4: 1.9, 5: 9.9}
    b = {0: 1.5, 1: 2.9, 2: 2.0, 3: 2.5, 4: 2.0}  # seed 5 unpaired: left out
    c = stats.paired_contrast(a, b, log=True)
    d = np.log([a[s] for s in range(5)]) - np.log([b[s] for s in range(5)])
    assert c.n == 5 and c.seeds == (0, 1, 2, 3, 4)
    assert c.estimate == pytest.approx(math.exp(d.mean()))
    lo, hi = sps.t.interval(0.95, 4, loc=d.mean(), scale=sps.sem(d))
    assert (c.ci_low, c.ci_high) == (pytest.approx(math.exp(lo)), pytest.approx(math.exp(hi)))
    assert c.p == pytest.approx(_exact_sign_flip(d))
    assert c.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
    crit = sps.t.ppf(0.975, 4) + sps.t.ppf(0.8, 4)
    assert c.mde == pytest.approx(math.exp(crit * d.std(ddof=1) / math.sqrt(5)))
    diff = stats.paired_contrast(a, b)
    assert diff.estimate == pytest.approx(np.mean([a[s] - b[s] for s in range(5)]))


def test_three_seeds_can_never_reach_p_below_a_quarter():
    assert stats.sign_flip_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(0.25)
    assert stats.sign_flip_p(np.zeros(4)) == 1.0


def test_holm_and_benjamini_hochberg_on_hand_examples():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005 x4, 0.01 x3, 0.03 x2, 0.04 x1, made monotone.
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted p * m / rank = 0.02, 0.02, 0.04, 0.04.
    assert stats.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_kendall_tau_is_scipys_with_a_bootstrap_interval_from_ten_runs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = x + rng.normal(scale=0.5, size=12)
    c = stats.kendall(x.tolist(), y.tolist())
    assert c.tau == pytest.approx(sps.kendalltau(x, y).statistic)
    assert c.n == 12 and c.ci_low <= c.tau <= c.ci_high
    few = stats.kendall(x[:6].tolist(), y[:6].tolist())
    assert math.isnan(few.ci_low) and math.isfinite(few.tau)


def _contrast(**kw):
    base = dict(
        a="okdph",
        b="dml",
        measure="lambda_max",
        log=True,
        n=8,
        family="primary",
        estimate=0.8,
        ci_low=0.7,
        ci_high=0.9,
        p=0.01,
        p_adj=0.03,
        mde=1.05,
        relevance=1.1,
    )
    return {**base, **kw}


def test_verdicts_say_only_what_the_interval_and_the_power_allow():
    assert verdict(_contrast()).endswith("lower.")
    assert "0.8x dml's [0.7, 0.9]" in verdict(_contrast())
    crossing = _contrast(ci_high=1.2, p=0.3, p_adj=0.6, mde=1.5)
    assert "inconclusive at n=8" in verdict(crossing)
    precise = _contrast(ci_low=0.97, ci_high=1.03, p=0.6, p_adj=0.9, mde=1.04)
    assert "no difference larger than 1.1" in verdict(precise)
