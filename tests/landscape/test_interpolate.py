"""Linear interpolation between two models: endpoints, exact parabolas, BatchNorm policies."""

import numpy as np
import pytest
import torch
from geometry_cases import (
    image_batches,
    plain_eval,
    regression_case,
    regression_loss,
    theta_of,
    tiny_convnet,
)

from landscape.core.errors import LandscapeError
from landscape.geometry.batchnorm import recalibrate
from landscape.geometry.interpolate import barrier_height, interpolate
from landscape.geometry.weights import as_state, lerp


def test_endpoints_equal_the_two_models_losses():
    model, other, batches = tiny_convnet(0), tiny_convnet(1), image_batches()
    curve = interpolate(model, model.state_dict(), other.state_dict(), batches)
    assert curve.start_loss == pytest.approx(plain_eval(model, None, batches)[0], rel=2e-6)
    assert curve.end_loss == pytest.approx(plain_eval(other, None, batches)[0], rel=2e-6)
    assert curve.start_accuracy == pytest.approx(plain_eval(model, None, batches)[1])
    assert curve.bn == "recalibrate" and curve.bn_endpoints == "own"
    assert 0.0 in curve.alphas and 1.0 in curve.alphas
    assert curve.alphas[0] == -0.25 and curve.alphas[-1] == 1.25
    assert np.all(np.diff(curve.alphas) > 0)
    assert curve.engine.n_samples == 40 and curve.engine.n_bn_samples == 40


def test_quadratic_loss_gives_the_exact_parabola():
    model, batches, loss_fn, x1, y = regression_case()
    start = as_state(model)
    end = {"weight": start["weight"] + 0.7, "bias": start["bias"] - 1.3}
    alphas = [-1.0, -0.3, 0.2, 0.5, 1.7]
    curve = interpolate(model, start, end, batches, alphas=alphas, loss_fn=loss_fn, bn="keep")
    t0, t1 = theta_of(start), theta_of(end)
    expected = [regression_loss((1 - a) * t0 + a * t1, x1, y) for a in curve.alphas]
    np.testing.assert_allclose(curve.loss, expected, rtol=1e-13)
    assert set(curve.alphas) == set(alphas) | {0.0, 1.0}
    # A parabola's barrier: the exact maximum on [0, 1] of the sampled points.
    expected = np.array(expected)
    inside = (curve.alphas >= 0) & (curve.alphas <= 1)
    ends = 0.5 * (expected[curve.alphas == 0.0][0] + expected[curve.alphas == 1.0][0])
    assert curve.barrier == pytest.approx(max(expected[inside]) - ends, rel=1e-12)
    assert np.isnan(curve.accuracy).all()
    assert curve.parameters == ("weight", "bias")


def test_barrier_height_definition():
    alphas = np.array([-0.5, 0.0, 0.25, 0.5, 1.0, 1.5])
    loss = np.array([9.0, 1.0, 4.0, 2.0, 3.0, 9.0])
    assert barrier_height(alphas, loss) == (2.0, 0.25)  # extrapolated points do not count
    loss[3] = np.nan
    assert np.isnan(barrier_height(alphas, loss)[0])


def test_bn_policies_at_interior_points():
    model, other, batches = tiny_convnet(0), tiny_convnet(1), image_batches()
    a, b = as_state(model), as_state(other)
    names = [n for n, _ in model.named_parameters()]
    stats = ["bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"]
    kw = {"alphas": [0.5]}
    mid = lerp(a, b, 0.5, names)
    keep = interpolate(model, a, b, batches, bn="keep", **kw)
    assert keep.loss[1] == pytest.approx(plain_eval(model, mid, batches)[0], rel=2e-6)
    both = interpolate(model, a, b, batches, bn="interpolate", **kw)
    assert both.loss[1] == pytest.approx(
        plain_eval(model, lerp(a, b, 0.5, names + stats), batches)[0], rel=2e-6
    )
    calib = image_batches(n=24, sizes=(12, 12), seed=7)
    recal = interpolate(model, a, b, batches, bn_data=calib, **kw)
    expected = plain_eval(model, recalibrate(model, mid, calib), batches)[0]
    assert recal.loss[1] == pytest.approx(expected, rel=2e-6)
    assert len({keep.loss[1], both.loss[1], recal.loss[1]}) == 3
    # With the policy at the endpoints too, alpha = 0 is the recalibrated start.
    ends = interpolate(model, a, b, batches, bn_data=calib, bn_endpoints="policy", **kw)
    assert ends.start_loss == pytest.approx(
        plain_eval(model, recalibrate(model, a, calib), batches)[0], rel=2e-6
    )
    with pytest.raises(LandscapeError):
        interpolate(model, a, b, batches, bn="train")


def test_include_filter_moves_only_selected_layers():
    model, other, batches = tiny_convnet(0), tiny_convnet(1), image_batches()
    a, b = as_state(model), as_state(other)
    curve = interpolate(model, a, b, batches, include="fc.*", bn="keep", alphas=[0.5])
    assert curve.parameters == ("fc.weight", "fc.bias")
    point = lerp(a, b, 0.5, ["fc.weight", "fc.bias"])
    assert curve.loss[1] == pytest.approx(plain_eval(model, point, batches)[0], rel=2e-6)
    assert torch.equal(model.fc.weight, a["fc.weight"])  # the model is never modified
