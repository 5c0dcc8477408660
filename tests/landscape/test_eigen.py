"""top_eigenvalues and the thick-restart Lanczos against exact spectra."""

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
from landscape.curvature.certify import StepSpread, kw_epsilon, spread_for
from landscape.curvature.eigenvalues import top_eigenvalues
from landscape.curvature.lanczos import error_bounds, extreme_eigenpairs


def _exact(h: torch.Tensor, k: int, which: str) -> np.ndarray:
    ev = torch.linalg.eigvalsh(h).numpy()[::-1]  # decreasing
    top, bottom = ev[:k], ev[len(ev) - k :]
    return {"largest": top, "smallest": bottom, "both": np.concatenate([top, bottom])}[which]


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_tiny_network_matches_dense_eigenvalues(which):
    model, loss_fn, x, y = tiny_problem()
    h = dense_hessian(model, loss_fn, [(x, y)])
    spec = top_eigenvalues(
        model, loss_fn, [(x, y)], k=4, which=which, tol=1e-10, show_progress=False
    )
    np.testing.assert_allclose(spec.values, _exact(h, 4, which), rtol=0, atol=1e-8)
    assert spec.converged.all() and spec.n_hvp <= h.shape[0]
    assert np.all(np.diff(spec.values) <= 0)
    assert spec.problem.n_params == 43 and spec.problem.n_samples == 30 and spec.which == which


def test_eigenvectors_satisfy_the_eigen_equation():
    model, loss_fn, x, y = tiny_problem()
    h = dense_hessian(model, loss_fn, [(x, y)])
    spec = top_eigenvalues(
        model,
        loss_fn,
        [(x, y)],
        k=3,
        which="both",
        tol=1e-10,
        return_vectors=True,
        show_progress=False,
    )
    vecs = spec.vectors
    assert vecs.shape == (6, 43)
    torch.testing.assert_close(vecs @ vecs.T, torch.eye(6, dtype=DTYPE), atol=1e-10, rtol=0)
    # The reported residuals are the true ones, ||H y - value * y||.
    residual = torch.linalg.vector_norm(
        vecs @ h - torch.from_numpy(spec.values)[:, None] * vecs, dim=1
    )
    np.testing.assert_allclose(residual.numpy(), spec.residuals, rtol=1e-3, atol=1e-12)
    assert np.all(spec.residuals < 1e-4)
    assert (
        "vectors" not in spec.to_dict() and len(spec.to_dict(include_vectors=True)["vectors"]) == 6
    )


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_known_spectrum_is_recovered(which):
    """A 200-dimensional quadratic with a decaying spectrum of mixed sign."""
    eigenvalues = decaying_spectrum(200)
    model, loss_fn, data = quadratic_problem(eigenvalues)
    spec = top_eigenvalues(model, loss_fn, data, k=5, which=which, tol=1e-10, show_progress=False)
    exact = np.sort(eigenvalues.numpy())[::-1]
    expected = {
        "largest": exact[:5],
        "smallest": exact[-5:],
        "both": np.concatenate([exact[:5], exact[-5:]]),
    }[which]
    np.testing.assert_allclose(spec.values, expected, rtol=0, atol=1e-8)
    assert spec.converged.all()


def test_largest_means_algebraic_not_magnitude():
    eigenvalues = torch.cat([torch.tensor([-100.0, 10.0, 9.0]), torch.linspace(-1, 1, 57)])
    model, loss_fn, data = quadratic_problem(eigenvalues.to(DTYPE))
    spec = top_eigenvalues(model, loss_fn, data, k=2, tol=1e-10, show_progress=False)
    np.testing.assert_allclose(spec.values, [10.0, 9.0], atol=1e-8)
    low = top_eigenvalues(
        model, loss_fn, data, k=1, which="smallest", tol=1e-10, show_progress=False
    )
    np.testing.assert_allclose(low.values, [-100.0], atol=1e-8)


def test_thick_restarts_keep_memory_bounded_and_still_converge():
    gen = torch.Generator().manual_seed(1)
    eigenvalues = torch.cat([torch.tensor([3.0, 2.9, 2.8]), torch.rand(397, generator=gen) * 2.5])
    a = matrix_with_spectrum(eigenvalues.to(DTYPE))
    v0 = torch.randn(400, generator=gen, dtype=DTYPE)
    pairs = extreme_eigenpairs(lambda v: a @ v, v0, k=3, tol=1e-10, basis_size=12, max_matvec=5000)
    assert pairs.n_restarts > 0 and pairs.converged.all()
    np.testing.assert_allclose(pairs.values, [3.0, 2.9, 2.8], atol=1e-8)


def test_basis_kept_elsewhere_gives_the_same_solve():
    """basis_device moves only the stored vectors: products see v0's device, values are equal.
    (A CUDA solve with its basis on the host is compared in analyses/gpu_check.py.)"""
    gen = torch.Generator().manual_seed(2)
    eigenvalues = torch.cat([torch.tensor([3.0, 2.9]), torch.rand(198, generator=gen) * 2.5])
    a = matrix_with_spectrum(eigenvalues.to(DTYPE))
    v0 = torch.randn(200, generator=gen, dtype=DTYPE)
    seen = []

    def matvec(v):
        seen.append(v.device)
        return a @ v

    kw = {"k": 2, "tol": 1e-10, "basis_size": 8, "return_vectors": True, "max_matvec": 5000}
    here = extreme_eigenpairs(lambda v: a @ v, v0, **kw)
    hosted = extreme_eigenpairs(matvec, v0, basis_device="cpu", **kw)
    assert hosted.n_restarts > 0 and set(seen) == {v0.device}
    np.testing.assert_array_equal(hosted.values, here.values)
    assert hosted.vectors.device == v0.device
    torch.testing.assert_close(hosted.vectors, here.vectors, rtol=0, atol=0)


def test_invariant_subspace_continues_from_a_fresh_direction():
    """diag(5, 5, 3, 1, ...): a Krylov space holds one copy of 5; the restart finds the second."""
    eigenvalues = torch.tensor([5.0, 5.0, 3.0, 1.0, 1.0, 0.5], dtype=DTYPE)
    a = torch.diag(eigenvalues)
    gen = torch.Generator().manual_seed(0)
    pairs = extreme_eigenpairs(
        lambda v: a @ v,
        torch.randn(6, generator=gen, dtype=DTYPE),
        k=6,
        tol=1e-12,
        new_direction=lambda: torch.randn(6, generator=gen, dtype=DTYPE),
    )
    np.testing.assert_allclose(pairs.values, eigenvalues.numpy(), atol=1e-12)


def test_budget_exhaustion_is_reported_not_hidden():
    eigenvalues = decaying_spectrum(200)
    model, loss_fn, data = quadratic_problem(eigenvalues)
    spec = top_eigenvalues(
        model, loss_fn, data, k=5, which="smallest", tol=1e-12, max_iter=8, show_progress=False
    )
    assert spec.n_hvp == 8 and not spec.converged.all()


def test_error_bounds_bound_the_true_errors():
    model, loss_fn, x, y = tiny_problem(seed=3)
    h = dense_hessian(model, loss_fn, [(x, y)])
    spec = top_eigenvalues(model, loss_fn, [(x, y)], k=3, tol=1e-3, show_progress=False)
    exact = _exact(h, 3, "largest")
    assert spec.converged.all()
    assert np.all(np.abs(spec.values - exact) <= spec.error_bounds + 1e-12)
    assert np.all(spec.error_bounds <= 1e-3 * np.abs(spec.values) + 1e-12)


def test_error_bound_uses_the_gap_only_when_resolved():
    theta, r = np.array([10.0, 5.0, 4.9]), np.array([0.1, 0.2, 0.2])
    bounds = error_bounds(theta, r)
    assert bounds[0] == pytest.approx(0.1**2 / (5.0 - 0.2))
    assert bounds[1] == pytest.approx(0.2)  # 4.9 is closer than its residual allows


def test_ragged_batches_equal_the_concatenated_batch():
    model, loss_fn, x, y = tiny_problem()
    batches = [(x[:13], y[:13]), (x[13:26], y[13:26]), (x[26:], y[26:])]
    one = top_eigenvalues(
        model, loss_fn, [(x, y)], k=3, which="both", tol=1e-10, show_progress=False
    )
    many = top_eigenvalues(
        model, loss_fn, batches, k=3, which="both", tol=1e-10, show_progress=False
    )
    np.testing.assert_allclose(many.values, one.values, rtol=0, atol=1e-10)
    assert many.problem.n_batches == 3 and many.problem.reuse_graph  # small: graphs kept


def test_float32_path_agrees_with_float64():
    from okdph.models import create

    torch.manual_seed(0)
    model = create("cnn_digits", width=4).eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 8, 8, generator=gen), torch.randint(0, 10, (48,), generator=gen)
    loss_fn = torch.nn.CrossEntropyLoss()
    with torch.no_grad():  # BatchNorm statistics of this data, so eval mode is well scaled
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        model(x)
        model.eval()
    f32 = top_eigenvalues(model, loss_fn, [(x, y)], k=3, tol=1e-4, show_progress=False)
    f64 = top_eigenvalues(
        model, loss_fn, [(x, y)], k=3, tol=1e-10, dtype=torch.float64, show_progress=False
    )
    assert f32.problem.dtype == "float32" and f64.problem.dtype == "float64"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert f32.converged.all()
    np.testing.assert_allclose(f32.values, f64.values, rtol=1e-3)


def test_operator_can_be_shared_and_results_serialise():
    from landscape.curvature.products import HessianOperator

    model, loss_fn, x, y = tiny_problem()
    op = HessianOperator(model, loss_fn, [(x, y)])
    first = top_eigenvalues(op, k=2, tol=1e-8, show_progress=False)
    second = top_eigenvalues(op, k=2, which="smallest", tol=1e-8, show_progress=False)
    assert op.n_hvp == first.n_hvp + second.n_hvp and op.n_passes == 1
    text = json.dumps(first.to_dict())
    assert '"which": "largest"' in text and '"n_samples": 30' in text
    with pytest.raises(LandscapeError):
        top_eigenvalues(op, loss_fn, [(x, y)])
    with pytest.raises(LandscapeError, match="which"):
        top_eigenvalues(model, loss_fn, [(x, y)], which="magnitude")


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")
def test_pyhessian_agrees_on_the_largest_magnitude_eigenvalue():
    """PyHessian's power iteration finds the largest |eigenvalue|: ours is one of both ends."""
    pyhessian = pytest.importorskip(
        "pyhessian", reason="optional cross-check: PyHessian comes with the dev and compare extras"
    )
    model, loss_fn, x, y = tiny_problem(seed=1)
    model, x = model.float(), x.float()
    ev = torch.linalg.eigvalsh(dense_hessian(model.double(), loss_fn, [(x.double(), y)])).numpy()
    exact = ev[np.argmax(np.abs(ev))]
    model = model.float()
    ends = top_eigenvalues(
        model, loss_fn, [(x, y)], k=1, which="both", tol=1e-6, show_progress=False
    ).values
    ours = ends[np.argmax(np.abs(ends))]
    torch.manual_seed(0)
    theirs, _ = pyhessian.hessian(model, loss_fn, data=(x, y), cuda=False).eigenvalues(
        top_n=1, tol=1e-6, maxIter=1000
    )
    assert ours == pytest.approx(exact, rel=1e-5)
    assert theirs[0] == pytest.approx(exact, rel=1e-2)


def _clustered(n: int = 200) -> torch.Tensor:
    """Top eigenvalues 5, 4.95, 4.9 above a bulk in [-1, 3] (the audit's hard case)."""
    bulk = torch.linspace(-1.0, 3.0, n - 3, dtype=DTYPE)
    return torch.cat([torch.tensor([5.0, 4.95, 4.9], dtype=DTYPE), bulk])


@pytest.mark.parametrize("k", [1, 2])
def test_clustered_tops_converged_claims_are_true_on_many_seeds(k):
    """With the gap-based bound as stopping rule, many seeds stopped off by 1-2% with bounds of
    1e-4; the certified residual bound must hold for every converged value on every seed."""
    eigenvalues = _clustered()
    a = matrix_with_spectrum(eigenvalues)
    exact = torch.sort(eigenvalues, descending=True).values[:k].numpy()
    wrong = 0
    for seed in range(40):
        pairs = extreme_eigenpairs(
            lambda v: a @ v,
            torch.randn(200, generator=torch.Generator().manual_seed(seed), dtype=DTYPE),
            k=k,
            tol=1e-4,
            max_matvec=400,
        )
        assert pairs.converged.all()
        # Each value is within its bound of an eigenvalue ...
        gaps = np.abs(pairs.values[:, None] - eigenvalues.numpy()[None, :]).min(axis=1)
        assert np.all(gaps <= pairs.bounds)
        # ... and a Ritz value never exceeds the eigenvalue of its rank (Cauchy interlacing).
        assert np.all(pairs.values <= exact + 1e-12)
        wrong += int(np.any(np.abs(pairs.values - exact) > 1e-4 * exact))
    # The certificate is about *an* eigenvalue; missing one altogether stays possible, and rare.
    assert wrong <= 2


def test_multiplicity_three_and_a_null_space():
    eigenvalues = torch.cat(
        [torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=DTYPE), torch.zeros(96, dtype=DTYPE)]
    )
    a = matrix_with_spectrum(eigenvalues)
    gen = torch.Generator().manual_seed(0)
    pairs = extreme_eigenpairs(
        lambda v: a @ v,
        torch.randn(100, generator=gen, dtype=DTYPE),
        k=2,
        which="both",
        tol=1e-8,
        new_direction=lambda: torch.randn(100, generator=gen, dtype=DTYPE),
    )
    assert pairs.converged.all()
    # The null space is reached (an eigenvalue 0 converges to the products' accuracy) and the
    # fresh direction after it brings a second copy of 3 into the Krylov space.
    np.testing.assert_allclose(pairs.values, [3.0, 3.0, 0.0, 0.0], atol=1e-8)
    exact = eigenvalues.numpy()
    gaps = np.abs(pairs.values[:, None] - exact[None, :]).min(axis=1)
    assert np.all(gaps <= pairs.bounds)


def test_float32_product_error_is_measured_not_assumed():
    eigenvalues = torch.linspace(-1.0, 16.0, 300, dtype=torch.float64)
    a32 = matrix_with_spectrum(eigenvalues).float()
    pairs = extreme_eigenpairs(
        lambda v: a32 @ v,
        torch.randn(300, generator=torch.Generator().manual_seed(0)),
        k=2,
        tol=1e-4,
        max_matvec=300,
    )
    # float32 products of a unit vector carry about 1e-6 of ||H|| = 16; the bounds say so
    # (the old floor-free gap bounds reported 1e-16 here).
    assert 1e-7 < pairs.product_error < 1e-3
    assert np.all(pairs.bounds >= pairs.product_error)
    assert np.all(np.abs(pairs.values - [16.0, eigenvalues[-2].item()]) <= pairs.bounds)


@pytest.mark.parametrize("k", [1, 2])
def test_complement_search_finds_what_the_main_solve_missed_on_every_seed(k):
    """Without the search, 1-2 of 40 seeds return 4.95 (or 4.9) as the top value, correctly
    certified to be near *an* eigenvalue; with it, every seed returns the true top k."""
    eigenvalues = _clustered()
    model, loss, data = quadratic_problem(eigenvalues)
    exact = np.array([5.0, 4.95])[:k]
    added = 0
    for seed in range(40):
        spec = top_eigenvalues(
            model, loss, data, k=k, tol=1e-4, seed=seed, certify_top=0.01, show_progress=False
        )
        np.testing.assert_allclose(spec.values, exact, rtol=2e-4)
        assert np.all(np.abs(spec.values - exact) <= spec.error_bounds + 1e-12)
        assert "(ii)" in spec.certificate
        if k == 1:
            # The solve grows its own Krylov space to the search's bound instead of a second
            # run: the bound's top is the returned value, and nothing above it was missed.
            assert spec.search.source == "solve" and spec.search.top == spec.values[0]
            assert spec.search.eps <= kw_epsilon(spec.problem.n_params, 20, 0.01)
        else:
            assert spec.search.top < exact[-1]
        added += spec.added
    assert added >= 1 or k == 1  # the merge path was exercised


def test_complement_search_resolves_a_triple_eigenvalue():
    eigenvalues = torch.cat(
        [torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=DTYPE), torch.linspace(-0.5, 0.5, 96)]
    )
    model, loss, data = quadratic_problem(eigenvalues)
    for seed in range(3):
        plain = top_eigenvalues(model, loss, data, k=3, tol=1e-8, seed=seed, show_progress=False)
        spec = top_eigenvalues(
            model, loss, data, k=3, tol=1e-8, seed=seed, certify_top=0.01, show_progress=False
        )
        # One Krylov space holds one direction per eigenspace (copies only come from fresh
        # directions); searches orthogonal to the locked vectors find the rest.
        assert plain.values[-1] == pytest.approx(1.0)
        np.testing.assert_allclose(spec.values, [3.0, 3.0, 3.0], atol=1e-7)
        assert np.all(np.abs(spec.values - 3.0) <= spec.error_bounds + 1e-12)


def test_kuczynski_wozniakowski_bound_holds_on_many_seeds():
    eigenvalues = decaying_spectrum(200)
    model, loss, data = quadratic_problem(eigenvalues)
    ordered = np.sort(eigenvalues.numpy())[::-1]
    k, failures = 2, 0
    for seed in range(40):
        spec = top_eigenvalues(
            model,
            loss,
            data,
            k=k,
            tol=1e-6,
            seed=seed,
            certify_top=0.05,
            search_steps=6,
            show_progress=False,
        )
        s = spec.search
        assert s.eps == pytest.approx((np.log(1.648 * np.sqrt(198) / 0.05) / 11) ** 2)
        top, width = ordered[k], ordered[k] - ordered[-1]  # the complement's spectrum
        assert s.top <= top + 1e-9  # a Ritz value of the complement: a lower bound
        failures += int(top - s.top > s.eps * width)
    assert failures <= 2  # at most 5% may fail; the bound is loose, so none should
    with pytest.raises(LandscapeError):
        top_eigenvalues(model, loss, data, certify_top=1.5, show_progress=False)
    assert spec.to_dict()["search"]["delta"] == 0.05


@pytest.mark.parametrize("n", [50, 25_322, 10**7])
def test_the_step_spread_keeps_the_bound_at_every_step_and_sums_to_delta(n):
    """A solve that stops on convergence may stop at any step from ``first`` on: the shares of
    delta sum to delta (union bound), and the bound is at its target at every one of them."""
    delta = 0.01
    target = kw_epsilon(n, 20, delta)
    spread = spread_for(n, target, delta, cap=499)
    shares = [delta * (1 - spread.ratio) * spread.ratio**j for j in range(2000)]
    assert math.fsum(shares) == pytest.approx(delta, rel=1e-12)
    # eps at step s is exactly kw_epsilon at that step's share of delta
    for j in (0, 1, 5):
        s = spread.first + j
        assert spread.epsilon(n, s, delta) == pytest.approx(kw_epsilon(n, s, shares[j]), rel=1e-12)
    assert all(
        spread.epsilon(n, s, delta) <= target * (1 + 1e-12) for s in range(spread.first, 499)
    )
    # the fewest steps: one step earlier the bound is not there yet
    assert StepSpread(spread.first - 1, spread.ratio).epsilon(n, spread.first - 1, delta) > target
    assert spread.epsilon(n, spread.first - 1, delta) == 1.0  # before first: no information
    # far fewer steps than spreading delta as 6 delta / (pi^2 s^2) from step 1 (eigen/4)
    old = next(
        s for s in range(1, 499) if kw_epsilon(n, s, 6 * delta / (math.pi * s) ** 2) <= target
    )
    assert spread.first < old


def test_the_solve_as_its_own_search_bounds_the_top_on_a_hidden_eigenvalue():
    """k = 1: the solve's unrestarted Krylov space from a random start carries the
    Kuczynski-Wozniakowski bound. A top eigenvalue 1.0 barely above a bulk reaching 0.999 is
    hard to resolve; whatever the solve returns, H must have no eigenvalue above
    top + eps x width on (far more than) a 1 - delta share of seeds."""
    eigenvalues = torch.cat(
        [torch.tensor([1.0], dtype=DTYPE), torch.linspace(0.0, 0.999, 299, dtype=DTYPE)]
    )
    model, loss, data = quadratic_problem(eigenvalues)
    failures = 0
    for seed in range(60):
        spec = top_eigenvalues(
            model, loss, data, k=1, which="largest", tol=1e-2, seed=seed, certify_top=0.01,
            show_progress=False,
        )  # fmt: skip
        search = spec.search
        assert search.source == "solve" and spec.added == 0
        assert spec.n_hvp == search.steps + 1  # one run, its first product repeated
        width = 1.0 - 0.0
        failures += 1.0 > search.top + search.eps * width + 1e-12
    assert failures == 0


def test_tol_scale_spectrum_certifies_the_small_end_to_the_spectrum_scale():
    eigenvalues = decaying_spectrum()
    model, loss, data = quadratic_problem(eigenvalues)
    exact = np.sort(eigenvalues.numpy())
    runs = {
        scale: top_eigenvalues(
            model, loss, data, k=1, which="both", tol=1e-3, tol_scale=scale, show_progress=False
        )
        for scale in ("value", "spectrum")
    }
    for scale, spec in runs.items():
        assert spec.converged.all() and spec.tol_scale == scale
        assert abs(spec.values[0] - exact[-1]) <= spec.error_bounds[0]
        assert abs(spec.values[1] - exact[0]) <= spec.error_bounds[1]
    # The small end (|lambda_min| ~ 1 beside lambda_max = 50) is certified to 1e-3 x 50, not
    # to 1e-3 x 1: fewer products, a bound that says so.
    spectrum, value = runs["spectrum"], runs["value"]
    assert spectrum.error_bounds[1] <= 1e-3 * 50 + spectrum.product_error
    assert spectrum.n_hvp < value.n_hvp
    assert "largest Ritz magnitude" in spectrum.certificate
