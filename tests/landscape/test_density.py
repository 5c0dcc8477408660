"""Stochastic Lanczos quadrature against exact spectra and moments."""

from __future__ import annotations

import json
import math

import numpy as np
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

from landscape.core.errors import LandscapeError
from landscape.curvature.density import broaden, default_sigma, density_grid, spectral_density
from landscape.curvature.lanczos import lanczos_quadrature
from landscape.curvature.products import rademacher


def _spectrum_and_matrix(n: int = 60, seed: int = 0):
    eigenvalues = torch.linspace(-2, 5, n, dtype=DTYPE) ** 3 / 10
    return eigenvalues, matrix_with_spectrum(eigenvalues, seed)


def test_quadrature_is_exact_for_polynomials_up_to_degree_2m_minus_1():
    """sum_j tau_j theta_j^p = v^T A^p v / v^T v for p <= 2m - 1 (Gauss quadrature)."""
    _, a = _spectrum_and_matrix()
    starts = torch.randn(3, 60, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    m = 6
    rules = lanczos_quadrature(lambda v: v @ a, starts, m)
    for (theta, tau), v in zip(rules, starts, strict=True):
        assert len(theta) == m and tau.sum() == pytest.approx(1.0, abs=1e-12)
        u = v / v.norm()
        power = u.clone()
        for p in range(2 * m):
            exact = float(u @ power)
            assert np.dot(tau, theta**p) == pytest.approx(exact, rel=1e-9, abs=1e-9)
            power = a @ power


def test_full_length_runs_return_the_spectrum_and_squared_projections():
    eigenvalues, a = _spectrum_and_matrix(n=30)
    _, vectors = torch.linalg.eigh(a)
    start = torch.randn(1, 30, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    ((theta, tau),) = lanczos_quadrature(lambda v: v @ a, start, 30)
    np.testing.assert_allclose(theta, eigenvalues.numpy(), atol=1e-10)
    u = start[0] / start[0].norm()
    np.testing.assert_allclose(tau, (vectors.T @ u).square().numpy(), atol=1e-10)


def test_invariant_subspace_stops_a_run_early():
    """A start vector in a 3-dimensional eigenspace gives exactly 3 nodes."""
    a = torch.diag(torch.arange(1.0, 11.0, dtype=DTYPE))
    start = torch.zeros(2, 10, dtype=DTYPE)
    start[0, [1, 4, 7]] = torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE)
    start[1] = 1.0
    rules = lanczos_quadrature(lambda v: v @ a, start, 8)
    np.testing.assert_allclose(rules[0][0], [2.0, 5.0, 8.0], atol=1e-12)
    np.testing.assert_allclose(rules[0][1], np.array([1.0, 4.0, 9.0]) / 14, atol=1e-12)
    assert len(rules[1][0]) == 8


def test_moments_match_the_dense_spectrum_within_sampling_error():
    """Mean over runs of sum tau theta^p estimates tr(H^p)/n with Rademacher variance."""
    model, loss_fn, x, y = tiny_problem()
    h = dense_hessian(model, loss_fn, [(x, y)])
    n, runs = h.shape[0], 20
    dens = spectral_density(
        model, loss_fn, [(x, y)], n_runs=runs, n_steps=10, seed=3, show_progress=False
    )
    for p in (1, 2, 3):
        hp = torch.linalg.matrix_power(h, p)
        var = 2 * (hp.square().sum() - hp.diagonal().square().sum()) / n**2 / runs
        assert abs(dens.moment(p) - float(torch.trace(hp)) / n) <= 4 * math.sqrt(float(var))


def test_known_spectrum_density_and_its_recorded_settings():
    eigenvalues = decaying_spectrum(200)
    model, loss_fn, data = quadratic_problem(eigenvalues)
    dens = spectral_density(model, loss_fn, data, n_runs=4, n_steps=40, show_progress=False)
    assert dens.n_hvp == 4 * 40 and len(dens.nodes) == 4
    assert all(
        len(t) == 40 and w.sum() == pytest.approx(1.0)
        for t, w in zip(dens.nodes, dens.weights, strict=True)
    )
    # Ritz values lie inside the spectrum; the extremes converge fast for outliers.
    assert max(t.max() for t in dens.nodes) == pytest.approx(50.0, abs=1e-6)
    assert min(t.min() for t in dens.nodes) >= float(eigenvalues.min()) - 1e-9
    assert np.trapezoid(dens.density, dens.grid) == pytest.approx(1.0, abs=1e-9)
    assert dens.sigma_rule == "range/n_steps"
    assert dens.sigma == pytest.approx(default_sigma(dens.nodes, 40))
    # Converged outlier nodes carry exactly the start vector's squared projections on the outlier
    # eigenvectors (the runs' Rademacher starts are redrawn from the same seed).
    starts = rademacher((4, 200), torch.Generator().manual_seed(0), DTYPE, torch.device("cpu"))
    _, q = torch.linalg.eigh(matrix_with_spectrum(eigenvalues))
    share = ((starts / starts.norm(dim=1, keepdim=True)) @ q[:, -6:]).square().sum(dim=1)
    rules = zip(dens.nodes, dens.weights, strict=True)
    for (theta, tau), exact in zip(rules, share, strict=True):
        assert tau[theta > 3.0].sum() == pytest.approx(float(exact), abs=1e-8)
    record = json.loads(json.dumps(dens.to_dict()))
    assert record["n_steps"] == 40 and len(record["nodes"]) == 4


def test_given_sigma_is_used_and_recorded():
    model, loss_fn, x, y = tiny_problem()
    dens = spectral_density(
        model, loss_fn, [(x, y)], n_runs=2, n_steps=8, sigma=0.01, show_progress=False
    )
    assert dens.sigma == 0.01 and dens.sigma_rule == "given"
    assert np.trapezoid(dens.density, dens.grid) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(LandscapeError, match="sigma"):
        spectral_density(model, loss_fn, [(x, y)], sigma=-1.0, show_progress=False)


def test_broadening_is_a_normalised_gaussian_mixture():
    nodes, weights = [np.array([0.0, 1.0])], [np.array([0.25, 0.75])]
    grid = density_grid(nodes, 0.1)
    dens = broaden(nodes, weights, 0.1, grid)
    i = np.argmin(np.abs(grid - 1.0))
    assert dens[i] == pytest.approx(0.75 / (0.1 * math.sqrt(2 * math.pi)), rel=1e-3)
    assert grid[0] == pytest.approx(-0.6) and grid[-1] == pytest.approx(1.6)


def test_multi_batch_equals_single_batch():
    model, loss_fn, x, y = tiny_problem()
    batches = [(x[:13], y[:13]), (x[13:26], y[13:26]), (x[26:], y[26:])]
    one = spectral_density(model, loss_fn, [(x, y)], n_runs=3, n_steps=12, show_progress=False)
    many = spectral_density(model, loss_fn, batches, n_runs=3, n_steps=12, show_progress=False)
    for a, b in zip(one.nodes, many.nodes, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)
    np.testing.assert_allclose(one.density, many.density, atol=1e-8)
