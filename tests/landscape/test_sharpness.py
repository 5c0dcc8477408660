"""Sharpness against exact answers: quadratics (trust region, separable box, closed-form
averages), and on small networks against a long multi-restart ascent."""

import numpy as np
import pytest
import torch
from geometry_cases import image_batches, plain_eval, tiny_convnet
from scipy.optimize import brentq
from torch import nn

from landscape.core.errors import LandscapeError
from landscape.geometry.ascent import auto_pgd, checkpoints
from landscape.geometry.sharpness import NormalizedLogits, _next_round, sharpness


class Quadratic(nn.Module):
    """Outputs its weight vector for every sample; with ``QuadraticLoss`` the dataset loss is
    exactly ``0.5 (w - t)' A (w - t)``."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return self.w.expand(x.shape[0], -1)


class QuadraticLoss(nn.Module):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = a

    def forward(self, out, target):
        r = out - target
        return 0.5 * ((r @ self.a) * r).sum(1).mean()


def quadratic_case(seed: int, d: int = 6, diagonal: bool = False, n: int = 8):
    rng = np.random.default_rng(seed)
    if diagonal:
        a = np.diag(rng.uniform(-1.0, 2.0, d))
    else:
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        a = q @ np.diag(rng.uniform(-1.0, 3.0, d)) @ q.T
    w, t = rng.normal(size=d), rng.normal(size=d)
    a_t = torch.tensor(a)
    data = [(torch.zeros(n, 1, dtype=torch.float64), torch.tensor(t).expand(n, d).clone())]
    return Quadratic(torch.tensor(w)), data, QuadraticLoss(a_t), a, w, t


def scaled_problem(a, w, t, adaptive):
    """The increase 0.5 u'Su + b'u in the scaled space u = delta / c."""
    c = np.abs(w) if adaptive else np.ones_like(w)
    return np.diag(c) @ a @ np.diag(c), c * (a @ (w - t))


def trust_region_max(s, b, rho):
    """Exact max of 0.5 u'Su + b'u over ||u|| <= rho (boundary case: lambda > lambda_max(S))."""
    lam, q = np.linalg.eigh(s)
    bt = q.T @ b

    def radius_gap(mu):
        return np.linalg.norm(bt / (mu - lam)) - rho

    top = lam[-1]
    hi = top + 1.0
    while radius_gap(hi) > 0:
        hi = top + 2 * (hi - top)
    mu = brentq(radius_gap, top + 1e-12, hi, xtol=1e-14)
    u = q @ (bt / (mu - lam))
    return 0.5 * u @ s @ u + b @ u


def box_max(s_diag, b, rho):
    """Exact max of sum_i 0.5 s_i u_i^2 + b_i u_i over |u_i| <= rho (separable)."""
    total = 0.0
    for si, bi in zip(s_diag, b, strict=True):
        candidates = [-rho, rho]
        if si < 0:
            candidates.append(float(np.clip(-bi / si, -rho, rho)))
        total += max(0.5 * si * u * u + bi * u for u in candidates)
    return total


def test_checkpoints_follow_the_auto_pgd_schedule():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(20) == [5, 9, 12, 14, 16, 18, 19]


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_l2_worst_case_is_the_trust_region_solution(seed, adaptive):
    model, data, loss, a, w, t = quadratic_case(seed)
    rho = 0.3
    result = sharpness(
        model, None, data, rho=rho, adaptive=adaptive, m=None, loss_fn=loss, show_progress=False
    )
    exact = trust_region_max(*scaled_problem(a, w, t, adaptive), rho)
    assert result.value <= exact + 1e-10
    assert result.value == pytest.approx(exact, rel=1e-3)
    assert result.radius[0] == pytest.approx(rho)
    assert result.plateaued and result.ascent[-1] == result.value
    assert np.all(np.diff(result.ascent) >= 0) and result.ascent[0] == 0.0


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_linf_worst_case_with_a_diagonal_hessian_is_the_separable_optimum(seed, adaptive):
    model, data, loss, a, w, t = quadratic_case(seed, diagonal=True)
    rho = 0.2
    result = sharpness(
        model,
        None,
        data,
        rho=rho,
        norm="linf",
        adaptive=adaptive,
        m=None,
        loss_fn=loss,
        show_progress=False,
    )
    s, b = scaled_problem(a, w, t, adaptive)
    exact = box_max(np.diag(s), b, rho)
    assert result.value <= exact + 1e-10
    assert result.value == pytest.approx(exact, rel=1e-3)
    assert result.radius[0] <= rho + 1e-12


@pytest.mark.parametrize("distribution", ["gaussian", "sphere"])
def test_average_case_matches_its_closed_form_with_a_calibrated_stderr(distribution):
    # Antithetic pairs remove the gradient term: each pair's increase is 0.5 u'Su exactly.
    # Expected: 0.5 rho^2 tr(S) (Gaussian) or 0.5 rho^2 tr(S) / d (sphere).
    model, data, loss, a, w, t = quadratic_case(0, d=6)
    a_psd = a + 1.5 * np.eye(6)  # the mean increase is then far from zero
    loss = QuadraticLoss(torch.tensor(a_psd))
    s, _ = scaled_problem(a_psd, w, t, True)
    rho = 0.1
    expected = 0.5 * rho**2 * np.trace(s) / (6 if distribution == "sphere" else 1)
    inside = 0
    for seed in range(40):
        r = sharpness(
            model,
            None,
            data,
            kind="average",
            rho=rho,
            distribution=distribution,
            loss_fn=loss,
            seed=seed,
            show_progress=False,
        )
        assert r.rel_stderr <= 0.05 or r.perturbed_loss.shape[0] == 512
        inside += abs(r.value - expected) <= 1.96 * r.stderr
    # A calibrated 95% interval: about 38 of 40 cover; below 33 would be a 1-in-1000 event.
    assert inside >= 33


def test_average_case_pairs_are_antithetic_and_seeded():
    model, data, loss, a, w, t = quadratic_case(1)
    r = sharpness(
        model,
        None,
        data,
        kind="average",
        rho=0.05,
        loss_fn=loss,
        seed=3,
        show_progress=False,
        adaptive=False,
    )
    again = sharpness(
        model,
        None,
        data,
        kind="average",
        rho=0.05,
        loss_fn=loss,
        seed=3,
        show_progress=False,
        adaptive=False,
    )
    np.testing.assert_array_equal(r.perturbed_loss, again.perturbed_loss)
    g = a @ (w - t)
    plus, minus = r.perturbed_loss[:, 0] - r.clean_loss, r.perturbed_loss[:, 1] - r.clean_loss
    # f(+d) - f(-d) = 2 g'd: the first-order term, large against the curvature term here.
    assert np.std(plus - minus) > 10 * np.std(plus + minus)
    assert r.n_evaluations == 2 * len(plus) and np.linalg.norm(g) > 0


def test_m_sharpness_averages_groups_and_m_equal_to_n_is_the_full_set():
    model, batches = tiny_convnet(0, dtype=torch.float64), image_batches(dtype=torch.float64)
    kwargs = dict(rho=0.2, iterations=6, show_progress=False)
    full = sharpness(model, None, batches, m=None, **kwargs)
    same = sharpness(model, None, batches, m=40, **kwargs)
    assert same.value == pytest.approx(full.value, rel=1e-9)
    grouped = sharpness(model, None, batches, m=16, **kwargs)
    assert grouped.n_groups == 2 and grouped.n_samples == 32  # 8 samples left out
    assert grouped.perturbed_loss.shape == (2, 1, 7)
    per_group = grouped.perturbed_loss.max(axis=(1, 2)) - grouped.perturbed_loss[:, 0, 0]
    assert grouped.value == pytest.approx(per_group.mean())
    with pytest.raises(LandscapeError):
        sharpness(model, None, batches, m=41, **kwargs)


def test_batchnorm_is_fixed_during_the_ascent_and_recalibrated_once_for_the_center():
    model, batches = tiny_convnet(0, dtype=torch.float64), image_batches(dtype=torch.float64)
    own = sharpness(model, None, batches, m=None, iterations=4, show_progress=False)
    assert own.clean_loss == pytest.approx(plain_eval(model, None, batches)[0], rel=1e-9)
    # The ascent's first value is the clean loss: eval mode, the model's own statistics.
    assert own.perturbed_loss[0, 0, 0] == pytest.approx(own.clean_loss, rel=1e-9)
    recal = sharpness(
        model, None, batches, m=None, iterations=4, center_bn="recalibrate", show_progress=False
    )
    assert recal.clean_loss != pytest.approx(own.clean_loss, rel=1e-6)
    assert recal.perturbed_loss[0, 0, 0] == pytest.approx(recal.clean_loss, rel=1e-9)
    assert recal.own_loss == pytest.approx(own.own_loss)


def test_normalized_logits_remove_the_scale_of_the_logits():
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    loss = NormalizedLogits(nn.CrossEntropyLoss())
    c = x - x.mean(1, keepdim=True)
    assert float(loss(x, y)) == pytest.approx(
        float(nn.functional.cross_entropy(c / c.norm(dim=1, keepdim=True), y))
    )
    assert float(loss(10 * x + 3, y)) == pytest.approx(float(loss(x, y)))


def _mlp_on_digits():
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(10):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    return net, [(x[:256], y[:256]), (x[256:512], y[256:512])]


@pytest.mark.parametrize(("norm", "rho"), [("l2", 0.1), ("l2", 0.5), ("linf", 0.005)])
def test_default_ascent_reaches_95_percent_of_a_long_multi_restart_ascent(norm, rho):
    net, data = _mlp_on_digits()
    default = sharpness(net, None, data, rho=rho, norm=norm, show_progress=False)
    long = sharpness(
        net, None, data, rho=rho, norm=norm, iterations=200, restarts=3, show_progress=False
    )
    assert default.iterations == 20 and default.m == 128 and default.n_groups == 4
    assert default.value >= 0.95 * long.value > 0


def test_invalid_settings_are_user_errors():
    model, batches = tiny_convnet(0), image_batches()
    for kwargs in (
        {"kind": "median"},
        {"norm": "l1"},
        {"bn": "interpolate"},
        {"bn": "recalibrate"},  # worst case: the ascent cannot follow recomputed statistics
        {"center_bn": "mean"},
        {"rho": 0.0},
        {"distribution": "uniform"},
        {"iterations": 0},
    ):
        with pytest.raises(LandscapeError):
            sharpness(model, None, batches, m=None, show_progress=False, **kwargs)


def test_average_case_may_recalibrate_at_every_point_and_records_it():
    model, batches = tiny_convnet(0), image_batches()
    r = sharpness(
        model,
        None,
        batches,
        kind="average",
        bn="recalibrate",
        max_pairs=4,
        min_pairs=4,
        show_progress=False,
    )
    assert r.bn == "recalibrate" and r.to_dict()["engine"]["n_bn_samples"] == 40
    assert r.perturbed_loss.shape == (4, 2) and r.m == 0 and np.isfinite(r.value)
    only_fc = sharpness(
        model, None, batches, include="fc.*", m=None, iterations=2, show_progress=False
    )
    assert only_fc.parameters == ("fc.weight", "fc.bias")
    assert only_fc.n_parameters == model.fc.weight.numel() + model.fc.bias.numel()


def test_adaptive_radius_is_finite_with_zero_weights():
    model = tiny_convnet(0)
    with torch.no_grad():
        model.fc.bias.zero_()  # |w| = 0 there: no perturbation, and no 0 / 0 in the radius
    r = sharpness(
        model,
        None,
        image_batches(),
        kind="average",
        distribution="sphere",
        min_pairs=3,
        max_pairs=3,
        show_progress=False,
    )
    np.testing.assert_allclose(r.radius, 0.1, rtol=1e-12)
    assert np.isfinite(r.value)


def test_auto_pgd_halves_its_step_and_never_leaves_the_ball():
    # A concave objective with its maximum inside the ball: steps of 2 * rho overshoot until
    # the step is halved, and the best value approaches the maximum from below.
    target = {"x": torch.tensor([0.3, -0.2], dtype=torch.float64)}

    def objective(u):
        r = u["x"] - target["x"]
        return -float(r @ r), {"x": -2 * r}

    trace = auto_pgd(objective, {"x": torch.zeros(2, dtype=torch.float64)}, 1.0, iterations=100)
    assert trace.step_sizes[0, -1] < trace.step_sizes[0, 0] / 8
    assert -1e-3 < trace.best <= 0.0
    assert np.linalg.norm(trace.best_point["x"].numpy()) <= 1.0 + 1e-12
    assert trace.n_evaluations == 101


def test_average_case_rounds_grow_by_a_quarter_to_double_towards_the_planned_size():
    # Relative error 0.06 at 64 pairs: 1.1 * 64 * (0.06 / 0.05)^2 = 101.4 -> 102 pairs.
    assert _next_round(64, 0.06, 0.05, 512) == 102
    assert _next_round(64, 0.051, 0.05, 512) == 80  # at least a quarter more
    assert _next_round(64, 0.5, 0.05, 512) == 128  # at most double
    assert _next_round(400, 0.5, 0.05, 512) == 512  # never past the cap
    assert _next_round(16, float("inf"), 0.05, 512) == 32  # a zero mean so far: double
