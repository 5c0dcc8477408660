"""Hutchinson and Hutch++ trace estimates against exact traces."""

from __future__ import annotations

import json

import pytest
import torch
from curvature_cases import (
    DTYPE,
    decaying_spectrum,
    dense_hessian,
    matrix_with_spectrum,
    quadratic_problem,
    tiny_problem,
)
from scipy import stats

from landscape.core.errors import LandscapeError
from landscape.curvature.trace import hessian_trace, hutchinson, hutchpp

CPU = torch.device("cpu")


def _dense(estimator, a: torch.Tensor, seed: int = 0, **kwargs):
    """``estimator`` on the dense symmetric ``a`` with probes seeded by ``seed``."""
    return estimator(
        lambda v: v @ a,
        a.shape[0],
        generator=torch.Generator().manual_seed(seed),
        dtype=DTYPE,
        device=CPU,
        **kwargs,
    )


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_tiny_network_trace_within_three_standard_errors(method):
    model, loss_fn, x, y = tiny_problem()
    exact = float(torch.trace(dense_hessian(model, loss_fn, [(x, y)])))
    est = hessian_trace(
        model, loss_fn, [(x, y)], method=method, rtol=0.05, max_hvp=400, show_progress=False
    )
    assert abs(est.value - exact) <= 3 * est.stderr
    assert est.stderr > 0 and est.n_hvp <= 400 and est.method == method


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_known_spectrum_trace_within_three_standard_errors(method):
    eigenvalues = decaying_spectrum(200)
    model, loss_fn, data = quadratic_problem(eigenvalues)
    est = hessian_trace(model, loss_fn, data, method=method, rtol=0.05, show_progress=False)
    assert est.converged and est.stderr <= 0.05 * abs(est.value)
    assert abs(est.value - float(eigenvalues.sum())) <= 3 * est.stderr


def test_hutchpp_needs_fewer_products_on_a_decaying_spectrum():
    eigenvalues = decaying_spectrum(200)
    model, loss_fn, data = quadratic_problem(eigenvalues)
    plain = hessian_trace(
        model, loss_fn, data, method="hutchinson", rtol=0.02, max_hvp=5000, show_progress=False
    )
    deflated = hessian_trace(
        model, loss_fn, data, method="hutch++", rtol=0.02, max_hvp=5000, show_progress=False
    )
    # Both reach the target (to the sampling error of the planning pilot, about a tenth).
    for est in (plain, deflated):
        assert est.stderr <= 1.1 * 0.02 * abs(est.value)
    assert deflated.n_hvp < plain.n_hvp / 3
    assert deflated.sketch_size > 0
    # Ky Fan: the exact part is at most the sum of the top sketch_size eigenvalues; the sketch
    # captured the six outliers (124.5 in total).
    top = torch.sort(eigenvalues, descending=True).values[: deflated.sketch_size].sum()
    assert 0.95 * 124.5 <= deflated.low_rank <= float(top) + 1e-9


def test_hutchpp_is_exact_for_low_rank_operators():
    """Rank 4 < one sketch block: the residual vanishes and the estimate is the trace."""
    eigenvalues = torch.cat([torch.tensor([4.0, 3.0, -2.0, 1.0]), torch.zeros(96)]).to(DTYPE)
    a = matrix_with_spectrum(eigenvalues)
    est = _dense(hutchpp, a, 0, rtol=1e-6, min_probes=10, block=10)
    assert est.sketch_size == 4 and est.converged
    assert est.value == pytest.approx(6.0, abs=1e-10) and est.stderr < 1e-10


def test_flat_spectrum_makes_hutchpp_plain_hutchinson():
    """Nothing is worth deflating: same probes, same products, same estimate as Hutchinson."""
    eigenvalues = torch.linspace(1.0, 2.0, 1000, dtype=DTYPE)
    model, loss_fn, data = quadratic_problem(eigenvalues)
    plain = hessian_trace(model, loss_fn, data, "hutchinson", rtol=6e-4, show_progress=False)
    deflated = hessian_trace(model, loss_fn, data, "hutch++", rtol=6e-4, show_progress=False)
    assert plain.n_hvp > 50 and deflated.sketch_size == 0
    assert (deflated.n_hvp, deflated.value) == (plain.n_hvp, pytest.approx(plain.value, rel=1e-12))
    assert abs(plain.value - 1500.0) <= 3 * plain.stderr


def test_hutchinson_standard_error_matches_its_theory():
    """Rademacher variance is 2 (||A||_F^2 - sum A_ii^2); the reported stderr estimates it."""
    a = matrix_with_spectrum(torch.linspace(-1, 3, 40, dtype=DTYPE))
    est = _dense(hutchinson, a, 1, rtol=0.0, max_matvec=2000, block=50)
    # The pilot plans; the other 1960 probes estimate.
    theory = (2 * (a.square().sum() - a.diagonal().square().sum()) / 1960).sqrt()
    assert est.n_probes == 1960 and est.n_matvec == 2000 and not est.converged
    assert est.stderr == pytest.approx(float(theory), rel=0.1)
    assert abs(est.value - float(torch.trace(a))) <= 4 * est.stderr


def test_multi_batch_equals_single_batch():
    model, loss_fn, x, y = tiny_problem()
    batches = [(x[:13], y[:13]), (x[13:26], y[13:26]), (x[26:], y[26:])]
    one = hessian_trace(model, loss_fn, [(x, y)], rtol=0.05, max_hvp=200, show_progress=False)
    many = hessian_trace(model, loss_fn, batches, rtol=0.05, max_hvp=200, show_progress=False)
    assert many.value == pytest.approx(one.value, rel=1e-10)
    assert many.n_hvp == one.n_hvp and many.problem.n_batches == 3


def test_budget_and_serialisation():
    model, loss_fn, x, y = tiny_problem()
    est = hessian_trace(
        model,
        loss_fn,
        [(x, y)],
        method="hutchinson",
        rtol=1e-6,
        max_hvp=35,
        block=10,
        show_progress=False,
    )
    assert est.n_hvp == 35 and not est.converged
    record = json.loads(json.dumps(est.to_dict()))
    assert record["method"] == "hutchinson" and record["problem"]["n_params"] == 43
    with pytest.raises(LandscapeError, match="method"):
        hessian_trace(model, loss_fn, [(x, y)], method="xtrace")


def _coverage_spectra(n: int = 100) -> dict[str, torch.Tensor]:
    i = torch.arange(1, n + 1, dtype=DTYPE)
    return {
        "flat": torch.linspace(1.0, 2.0, n, dtype=DTYPE),
        "power-law": 10.0 * i**-1.5,  # one eigenvalue dominates: z^T A z is skewed (2.1)
        "outliers": decaying_spectrum(n),
        "indefinite": torch.linspace(-1.0, 3.0, n, dtype=DTYPE),
    }


@pytest.mark.slow
@pytest.mark.parametrize("spectrum", ["flat", "power-law", "outliers", "indefinite"])
@pytest.mark.parametrize("estimator", [hutchpp, hutchinson], ids=["hutch++", "hutchinson"])
def test_the_95_percent_interval_covers_the_trace_over_2000_seeds(spectrum, estimator):
    eigenvalues = _coverage_spectra()[spectrum]
    a, exact = matrix_with_spectrum(eigenvalues), float(eigenvalues.sum())
    hits, converged = 0, 0
    for seed in range(2000):
        est = _dense(estimator, a, seed, rtol=0.05, max_matvec=1000)
        hits += est.interval[0] <= exact <= est.interval[1]
        converged += est.converged
    # 2000 runs give the coverage to +-0.5% (one standard error): 93.5% is three below 95%.
    assert hits / 2000 >= 0.935
    # Planned from an 80% bound on the pilot's deviation; a skewed spectrum's pilot is noisier.
    assert converged / 2000 >= 0.6


def test_interval_is_student_t_and_converged_means_the_target_was_met():
    a = matrix_with_spectrum(torch.linspace(-1, 3, 40, dtype=DTYPE))
    for rtol in (0.01, 0.05, 0.2):
        est = _dense(hutchpp, a, 3, rtol=rtol, max_matvec=3000)
        half = stats.t.ppf(0.975, est.df) * est.stderr
        assert est.interval == pytest.approx((est.value - half, est.value + half), rel=1e-12)
        assert est.df == est.n_probes - 1 and est.n_probes >= 40
        assert est.converged == (est.stderr <= rtol * abs(est.value))
    with pytest.raises(LandscapeError, match="min_probes"):
        hessian_trace(a, min_probes=1)
