"""BatchNorm policies: recalibration, folding into the previous layer, policy checks."""

import copy

import pytest
import torch
from geometry_cases import TinyConvNet, image_batches, randomize_bn, tiny_convnet
from torch import nn

from landscape.core.errors import LandscapeError
from landscape.core.fold import _sequential_plan, fold_agrees, fold_plan, fold_state
from landscape.geometry.batchnorm import (
    axes_for_policy,
    batchnorm_layers,
    check_policy,
    recalibrate,
    running_stat_names,
)
from landscape.geometry.directions import direction_between, random_direction
from landscape.geometry.weights import as_state, parameter_names
from okdph.models import create


def _train_mode_pass(model: nn.Module, batches) -> dict[str, torch.Tensor]:
    """What the recalibration must reproduce: reset, momentum=None, a train-mode pass."""
    net = copy.deepcopy(model)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for x, _ in batches:
            net(x)
    return dict(net.state_dict())


@pytest.mark.parametrize("name", ["tiny", "resnet_block"])
def test_recalibrate_reproduces_a_cumulative_train_mode_pass(name):
    if name == "tiny":
        model, batches = tiny_convnet(0), image_batches(sizes=(16, 16, 8))
    else:
        torch.manual_seed(0)
        model = randomize_bn(create("cnn_digits", width=4), 1).eval()
        g = torch.Generator().manual_seed(2)
        x, y = torch.randn(30, 1, 8, 8, generator=g), torch.randint(0, 10, (30,), generator=g)
        batches = [(x[:12], y[:12]), (x[12:24], y[12:24]), (x[24:], y[24:])]
    state = as_state(model)
    before = {k: v.clone() for k, v in state.items()}
    out = recalibrate(model, state, batches)
    expected = _train_mode_pass(model, batches)
    stats = running_stat_names(model)
    assert stats
    for k in stats:
        assert torch.equal(out[k], expected[k]), k
    assert int(out[stats[2]]) == len(batches)  # the batch counter
    # Nothing else changed: inputs, the model's mode and its momenta.
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert not model.training
    assert all(m.momentum == 0.1 for m in batchnorm_layers(model).values())
    for k in state:
        if k not in stats:
            assert out[k] is state[k]


def test_recalibrate_weighs_batches_equally_and_keeps_dropout_off():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=g)
    batches = [(x[:8], None), (x[8:], None)]
    out = recalibrate(net, as_state(net), batches)
    with torch.no_grad():
        h = net[0](x)
    expected_mean = 0.5 * (h[:8].mean(0) + h[8:].mean(0))
    assert torch.allclose(out["1.running_mean"], expected_mean, atol=1e-6)
    expected_var = 0.5 * (h[:8].var(0) + h[8:].var(0))  # unbiased per batch
    assert torch.allclose(out["1.running_var"], expected_var, atol=1e-6)
    again = recalibrate(net, as_state(net), batches)
    assert torch.equal(out["1.running_var"], again["1.running_var"])  # dropout was off


def test_recalibration_without_batches_is_a_user_error():
    model = tiny_convnet(0)
    with pytest.raises(LandscapeError, match="calibration"):
        recalibrate(model, as_state(model), [])


def test_model_without_batchnorm_is_returned_unchanged():
    net = nn.Sequential(nn.Linear(3, 2))
    state = as_state(net)
    assert recalibrate(net, state, [(torch.zeros(2, 3), None)]) == state
    assert fold_plan(net) is None


@pytest.mark.parametrize("affine", [True, False])
def test_folded_network_equals_the_eval_mode_network(affine):
    torch.manual_seed(0)
    model = randomize_bn(TinyConvNet(affine=affine), 3).double().eval()
    plan = fold_plan(model)
    assert plan is not None
    assert {p[:2] for p in plan.pairs} == {("conv1", "bn1"), ("conv2", "bn2")}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plan.module.modules())
    x = image_batches(dtype=torch.float64)[0][0]
    state = as_state(model)
    with torch.no_grad():
        expected = model(x)
        got = torch.func.functional_call(plan.module, fold_state(plan, state), (x,))
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    # The plan works at any weights, not only those it was traced with.
    torch.manual_seed(5)
    other = as_state(randomize_bn(TinyConvNet(affine=affine), 5).double())
    with torch.no_grad():
        ref = copy.deepcopy(model)
        ref.load_state_dict(other)
        got = torch.func.functional_call(plan.module, fold_state(plan, other), (x,))
        assert torch.allclose(got, ref(x), rtol=1e-12, atol=1e-12)


def test_linear_bn_is_folded():
    mlp = randomize_bn(create("mlp", input_dim=5, hidden=(6,), bn=True), 0).double().eval()
    plan = fold_plan(mlp)
    assert plan is not None and plan.pairs[0][:2] == ("body.1", "body.2")
    x = torch.randn(7, 5, dtype=torch.float64)
    with torch.no_grad():
        got = torch.func.functional_call(plan.module, fold_state(plan, as_state(mlp)), (x,))
        assert torch.allclose(got, mlp(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "shape"), [("cnn_digits", (5, 1, 8, 8)), ("cnn1d", (5, 40))])
def test_untraceable_models_are_folded_through_their_sequential_children(name, shape):
    # Both pick the input's layout with Python control flow on x.dim(), which torch.fx cannot
    # trace; their conv-BN pairs sit side by side in an nn.Sequential.
    model = randomize_bn(create(name), 1).double().eval()
    with pytest.raises(Exception):  # noqa: B017  (the precondition: tracing fails)
        torch.fx.symbolic_trace(model)
    plan = fold_plan(model)
    assert plan is not None
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    assert [p[0] for p in plan.pairs] == convs and len(convs) == 3
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plan.module.modules())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x = torch.randn(*shape, dtype=torch.float64)
    state = as_state(model)
    with torch.no_grad():
        got = torch.func.functional_call(plan.module, fold_state(plan, state), (x,))
        assert torch.allclose(got, model(x), rtol=1e-12, atol=1e-12)
    assert fold_agrees(plan, model, state, x)


class _Reordered(nn.Sequential):
    def forward(self, x):
        return self[1](self[0](x).flip(1))  # a subclass may apply its children in any order


def test_sequential_subclasses_are_not_folded_and_a_wrong_fold_is_caught():
    assert fold_plan(_Reordered(nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3))) is None  # traced
    wrapper = nn.ModuleDict({"seq": _Reordered(nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3))})
    assert _sequential_plan(wrapper) is None
    # Linear then BatchNorm1d on (batch, channels, length) inputs normalise different axes, so
    # folding them is wrong; the guard sees it.
    odd = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    odd = randomize_bn(odd, 2).double().eval()
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    plan = fold_plan(odd)
    assert plan is not None
    assert not fold_agrees(plan, odd, as_state(odd), x)


def test_policies_decide_which_direction_components_move():
    model = tiny_convnet(0)
    state = as_state(model)
    names = parameter_names(model)
    between = direction_between(model, state, as_state(tiny_convnet(1)))
    kept = axes_for_policy(model, [between], "keep")[0]
    assert set(kept) == set(names)
    moved = axes_for_policy(model, [between], "interpolate")[0]
    assert "bn1.running_mean" in moved and "bn1.num_batches_tracked" not in moved
    random = random_direction(state, names, seed=0)
    with pytest.raises(LandscapeError, match="interpolate"):
        axes_for_policy(model, [random], "interpolate")
    assert check_policy("keep") == "keep"
    with pytest.raises(LandscapeError, match="recalibrate"):
        check_policy("train")
