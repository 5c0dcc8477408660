"""Sharpness on an exact quadratic (linear least squares), where every quantity has a closed form."""

import numpy as np
import pytest
import torch
from geometry_cases import (
    image_batches,
    least_squares,
    plain_eval,
    regression_case,
    state_from_theta,
    tiny_convnet,
)

from landscape.core.errors import LandscapeError
from landscape.geometry.sharpness import sharpness


def _at_minimum():
    model, batches, loss_fn, x1, y = regression_case(n=60, d=3)
    theta = least_squares(x1, y)
    hessian = 2.0 * x1.T @ x1 / len(y)  # of mean((x1 theta - y)^2)
    return model, batches, loss_fn, state_from_theta(theta, 3), theta, hessian


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_at_a_minimum_is_half_rho_squared_top_curvature(adaptive):
    model, batches, loss_fn, weights, theta, hessian = _at_minimum()
    rho = 0.1 if adaptive else 0.05
    c = np.abs(theta) if adaptive else np.ones_like(theta)
    top = np.linalg.eigvalsh(np.diag(c) @ hessian @ np.diag(c))[-1]
    result = sharpness(
        model,
        weights,
        batches,
        kind="worst",
        rho=rho,
        adaptive=adaptive,
        steps=60,
        step_size=rho,
        loss_fn=loss_fn,
        bn="keep",
        seed=1,
    )
    # Gradient ascent starts at the exact minimum, where the gradient is only rounding noise;
    # normalised steps then act as power iterations on the (scaled) Hessian.
    assert result.value == pytest.approx(0.5 * rho**2 * top, rel=1e-4)
    assert np.all(result.radius <= rho * (1 + 1e-12))
    assert result.kind == "worst" and result.steps == 60 and result.adaptive is adaptive
    assert result.clean_loss == pytest.approx(result.own_loss)


@pytest.mark.parametrize("distribution", ["sphere", "gaussian"])
def test_average_case_matches_the_expected_quadratic_increase(distribution):
    model, batches, loss_fn, weights, theta, hessian = _at_minimum()
    rho, n = 0.2, 3000
    result = sharpness(
        model,
        weights,
        batches,
        kind="average",
        rho=rho,
        n_perturbations=n,
        distribution=distribution,
        adaptive=True,
        loss_fn=loss_fn,
        bn="keep",
        seed=3,
        points_per_pass=64,
    )
    scaled = np.diag(np.abs(theta)) @ hessian @ np.diag(np.abs(theta))
    d = len(theta)
    # E[0.5 u^T S u] for u uniform on the sphere of radius rho, or u ~ N(0, rho^2 I).
    expected = 0.5 * rho**2 * np.trace(scaled) / (d if distribution == "sphere" else 1)
    assert abs(result.value - expected) < 5 * result.stderr
    assert result.stderr < 0.1 * expected
    if distribution == "sphere":
        np.testing.assert_allclose(result.radius, rho, rtol=1e-12)
    assert result.perturbed_loss.shape == (n,) and result.n_perturbations == n


def test_seeded_and_recorded():
    model, batches = tiny_convnet(0), image_batches()
    a = sharpness(model, None, batches, rho=0.05, n_perturbations=4, seed=7)
    b = sharpness(model, None, batches, rho=0.05, n_perturbations=4, seed=7)
    c = sharpness(model, None, batches, rho=0.05, n_perturbations=4, seed=8)
    np.testing.assert_array_equal(a.perturbed_loss, b.perturbed_loss)
    assert not np.array_equal(a.perturbed_loss, c.perturbed_loss)
    assert a.bn == "recalibrate" and a.rho == 0.05 and a.distribution == "sphere"
    assert a.own_loss == pytest.approx(plain_eval(model, None, batches)[0], rel=2e-6)
    # The clean reference uses the same policy as the perturbed points (recalibrated here).
    assert a.clean_loss != pytest.approx(a.own_loss, rel=1e-6)
    d = a.to_dict()
    assert d["kind"] == "average" and d["engine"]["n_bn_samples"] == 40
    only_fc = sharpness(model, None, batches, include="fc.*", n_perturbations=2, bn="keep")
    assert only_fc.parameters == ("fc.weight", "fc.bias")
    assert only_fc.n_parameters == model.fc.weight.numel() + model.fc.bias.numel()


def test_worst_case_exceeds_average_case_on_a_network():
    model, batches = tiny_convnet(0, dtype=torch.float64), image_batches(dtype=torch.float64)
    avg = sharpness(model, None, batches, rho=0.5, n_perturbations=8, bn="keep")
    worst = sharpness(model, None, batches, rho=0.5, kind="worst", steps=4, bn="keep")
    assert worst.value > avg.value
    assert np.all(np.diff(np.maximum.accumulate(worst.perturbed_loss)) >= 0)


def test_invalid_settings_are_user_errors():
    model, batches = tiny_convnet(0), image_batches()
    for kwargs in (
        {"kind": "median"},
        {"bn": "interpolate"},
        {"rho": 0.0},
        {"distribution": "uniform"},
    ):
        with pytest.raises(LandscapeError):
            sharpness(model, None, batches, **kwargs)


def test_adaptive_radius_is_finite_with_zero_weights():
    model = tiny_convnet(0)
    with torch.no_grad():
        model.fc.bias.zero_()  # |w| = 0 there: no perturbation, and no 0 / 0 in the radius
    result = sharpness(model, None, image_batches(), adaptive=True, n_perturbations=3, bn="keep")
    np.testing.assert_allclose(result.radius, 0.05, rtol=1e-12)
    assert np.isfinite(result.value)
