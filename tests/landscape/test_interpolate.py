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
    curve = interpolate(model, model.state_dict(), other.state_dict(), batches, bn_endpoints="own")
    assert curve.start_loss == pytest.approx(plain_eval(model, None, batches)[0], rel=2e-6)
    assert curve.end_loss == pytest.approx(plain_eval(other, None, batches)[0], rel=2e-6)
    assert curve.start_accuracy == pytest.approx(plain_eval(model, None, batches)[1])
    assert (curve.start_own_loss, curve.end_own_loss) == (curve.start_loss, curve.end_loss)
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
    # A convex parabola never rises above its chord: the barrier is exactly 0, at an end.
    assert curve.barrier == 0.0 and curve.barrier_alpha == 0.0
    assert np.isnan(curve.accuracy).all() and np.isnan(curve.error_barrier)
    assert curve.parameters == ("weight", "bias")


def test_barrier_height_is_the_rise_above_the_chord():
    alphas = np.array([-0.5, 0.0, 0.25, 0.5, 1.0, 1.5])
    loss = np.array([9.0, 1.0, 4.0, 2.0, 3.0, 9.0])
    # The chord from 1 to 3 is 1.5 at alpha 0.25 and 2 at 0.5; extrapolated points do not count.
    assert barrier_height(alphas, loss) == (2.5, 0.25)
    loss[3] = np.nan
    assert np.isnan(barrier_height(alphas, loss)[0])
    grid = np.arange(-5, 26) / 20.0
    # A monotone straight line has no barrier, however far apart its ends are (the old
    # "max minus mean of the ends" gave half their difference).
    assert barrier_height(grid, 3.0 * grid) == (0.0, 0.0)
    # f = 4 alpha (1 - alpha) + 2 alpha rises 1 above its chord 2 alpha, at alpha = 1/2 exactly.
    assert barrier_height(grid, 4 * grid * (1 - grid) + 2 * grid) == pytest.approx((1.0, 0.5))


def test_policy_endpoints_by_default_and_own_values_recorded():
    model, other, batches = tiny_convnet(0), tiny_convnet(1), image_batches()
    a, b = as_state(model), as_state(other)
    calib = image_batches(n=24, sizes=(12, 12), seed=7)
    curve = interpolate(model, a, b, batches, bn_data=calib, alphas=[0.5])
    assert curve.bn_endpoints == "policy"
    recal_start = plain_eval(model, recalibrate(model, a, calib), batches)
    assert curve.start_loss == pytest.approx(recal_start[0], rel=2e-6)
    assert curve.start_own_loss == pytest.approx(plain_eval(model, None, batches)[0], rel=2e-6)
    assert curve.end_own_loss == pytest.approx(plain_eval(other, None, batches)[0], rel=2e-6)
    assert curve.end_own_accuracy == pytest.approx(plain_eval(other, None, batches)[1])
    assert curve.start_own_loss != curve.start_loss
    # The error barrier is the chord barrier of 1 - accuracy on the same points.
    assert (curve.error_barrier, curve.error_barrier_alpha) == barrier_height(
        curve.alphas, 1.0 - curve.accuracy
    )
    assert curve.definition.startswith("barrier/2")


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
