"""The evaluation engine equals a plain eval-mode ``model(x)`` loop, on every path it can take."""

import math

import numpy as np
import pytest
import torch
from geometry_cases import image_batches, plain_eval, randomize_bn, tiny_convnet
from torch import nn

from landscape.geometry.directions import random_direction
from landscape.geometry.evaluate import Evaluator, evaluate
from landscape.geometry.weights import as_state, combine, parameter_names
from okdph.models import create


def _digits_case():
    torch.manual_seed(0)
    model = randomize_bn(create("cnn_digits", width=4), 0).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(37, 1, 8, 8, generator=g), torch.randint(0, 10, (37,), generator=g)
    return model, [(x[:20], y[:20]), (x[20:], y[20:])]


def _mlp_case():
    torch.manual_seed(0)
    model = randomize_bn(create("mlp", input_dim=6, hidden=(8, 8), bn=True), 0).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(25, 6, generator=g), torch.randint(0, 10, (25,), generator=g)
    return model, [(x[:10], y[:10]), (x[10:], y[10:])]


CASES = {
    "tiny_convnet": lambda: (tiny_convnet(0), image_batches()),
    "cnn_digits": _digits_case,
    "mlp_bn": _mlp_case,
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_engine_equals_plain_eval_loop(case, chunk_size):
    model, batches = CASES[case]()
    ref_loss, ref_acc = plain_eval(model, None, batches)
    ev = Evaluator(model, batches, chunk_size=chunk_size)
    loss, acc = ev.evaluate_one(ev.state())
    assert loss == pytest.approx(ref_loss, rel=2e-6)
    assert acc == pytest.approx(ref_acc, abs=1e-12)
    # At other weights too (the engine must not be tied to the weights it was built with).
    state = as_state(model)
    moved = combine(state, [(0.3, random_direction(state, parameter_names(model), seed=1))])
    loss, _ = ev.evaluate_one(moved)
    assert loss == pytest.approx(plain_eval(model, moved, batches)[0], rel=2e-6)


def test_engine_paths_agree_exactly_in_float64():
    model = tiny_convnet(0, dtype=torch.float64)
    batches = image_batches(dtype=torch.float64)
    ref, _ = plain_eval(model, None, batches)
    for kwargs in (
        {},
        {"fold_bn": False, "memory_format": "contiguous"},
        {"chunk_size": 5, "memory_format": "channels_last"},
    ):
        ev = Evaluator(model, batches, **kwargs)
        assert ev.evaluate_one(ev.state())[0] == pytest.approx(ref, rel=1e-13), kwargs
    assert Evaluator(model, batches).settings.fold_bn
    assert not Evaluator(model, batches, fold_bn=False).settings.fold_bn


def test_vmapped_points_equal_single_points():
    model = tiny_convnet(0, dtype=torch.float64)
    batches = image_batches(dtype=torch.float64)
    base = as_state(model)
    names = parameter_names(model)
    states = [combine(base, [(0.1 * k, random_direction(base, names, seed=k))]) for k in range(5)]
    single = Evaluator(model, batches, points_per_pass=1).evaluate(states)
    stacked = Evaluator(model, batches, points_per_pass=3, memory_format="contiguous")
    assert stacked.settings.points_per_pass == 3
    together = stacked.evaluate(states)
    for a, b in zip(single, together, strict=True):
        assert a == pytest.approx(b, rel=1e-12)
    refs = [plain_eval(model, s, batches)[0] for s in states]
    assert together[0] == pytest.approx(refs, rel=1e-12)


def test_loss_is_sample_weighted_over_unequal_batches():
    model = tiny_convnet(0, dtype=torch.float64)
    batches = image_batches(sizes=(30, 3, 7), dtype=torch.float64)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        per_sample = nn.functional.cross_entropy(model(x), y, reduction="none")
        mean_of_batch_means = sum(
            float(nn.functional.cross_entropy(model(b[0]), b[1])) for b in batches
        ) / len(batches)
    got = evaluate(model, None, batches, chunk_size=4).loss
    assert got == pytest.approx(float(per_sample.mean()), rel=1e-13)
    assert got != pytest.approx(mean_of_batch_means, rel=1e-6)


def test_regression_targets_give_nan_accuracy_and_model_is_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(9, 3), torch.randn(9, 2)
    result = evaluate(model, None, [(x, y)], loss_fn=nn.MSELoss())
    assert math.isnan(result.accuracy)
    with torch.no_grad():
        expected = float(nn.functional.mse_loss(model[0](x), y))  # eval: dropout off
    assert result.loss == pytest.approx(expected, rel=1e-6)
    assert model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert result.to_dict()["engine"]["loss"] == "MSELoss"


def test_bf16_autocast_is_opt_in_and_close():
    model, batches = tiny_convnet(0), image_batches()
    exact = evaluate(model, None, batches)
    low = evaluate(model, None, batches, bf16=True)
    assert low.engine.bf16 and not exact.engine.bf16
    assert low.loss == pytest.approx(exact.loss, rel=3e-2)


def test_loss_and_grad_matches_autograd_of_the_plain_loss():
    """BatchNorm is folded inside the differentiated loss; the gradient is still that of the
    plain model, w.r.t. its own parameters (the BatchNorm's gamma and beta included)."""
    model = tiny_convnet(0, dtype=torch.float64)
    batches = image_batches(dtype=torch.float64)
    ev = Evaluator(model, batches, chunk_size=6)
    assert ev.plan is not None
    names = ["conv1.weight", "bn1.weight", "bn2.bias", "fc.bias"]
    loss, grad = ev.loss_and_grad(ev.state(), names)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    ref = nn.functional.cross_entropy(model(x), y)
    params = dict(model.named_parameters())
    expected = torch.autograd.grad(ref, [params[n] for n in names])
    assert loss == pytest.approx(float(ref.detach()), rel=1e-12)
    for name, want in zip(names, expected, strict=True):
        assert torch.allclose(grad[name], want, rtol=1e-10), name


def test_worker_threads_give_the_numbers_of_one_thread():
    model = tiny_convnet(0, dtype=torch.float64)
    batches = image_batches(dtype=torch.float64)
    calib = image_batches(n=24, sizes=(12, 12), seed=5, dtype=torch.float64)
    base = as_state(model)
    names = parameter_names(model)
    states = [combine(base, [(0.05 * k, random_direction(base, names, seed=k))]) for k in range(24)]
    serial = Evaluator(model, batches, bn_data=calib, points_per_pass=1, workers=1)
    threaded = Evaluator(model, batches, bn_data=calib, points_per_pass=1, workers=3)
    assert threaded.settings.workers == 3
    for bn in ("keep", "recalibrate"):
        build = lambda k: (states[k], True)  # noqa: E731
        expected = serial.evaluate_points(range(len(states)), build, bn)
        got = threaded.evaluate_points(range(len(states)), build, bn)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-12)
    assert torch.get_num_threads() == 1  # restored after the threaded run (conftest sets 1)
