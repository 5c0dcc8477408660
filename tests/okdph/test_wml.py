"""WML: the mirror-descent step, the hypergradient against independent computations, weights that
stay on the simplex and move towards the better peer, and pruned members."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from okdph.config import ConfigError
from okdph.methods import StepContext, build_method
from okdph.methods.base import kd_loss
from okdph.methods.wml import (
    derivative_gradients,
    ensemble_gradients,
    hypergradient,
    keep_fractions,
    mirror_descent_step,
    pairwise_kd,
)
from okdph.models import create
from okdph.models.branches import member_outputs
from okdph.models.small import count_parameters


def _factory(**kw):
    return create("cnn_digits", width=4, **kw).double()


def _method(num=3, init="independent", seed=0, **config):
    torch.manual_seed(seed)
    return build_method("wml", config, _factory, num, init).double()


def _digits(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(
        0, 10, (n,), generator=g
    )


def _ctx(step=0, lr=0.1):
    return StepContext(0, step, step, 10, np.random.default_rng(0), lr=lr)


def test_mirror_descent_step_by_hand():
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    g = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    raw = [0.5 * math.exp(-0.1), 0.3, 0.2 * math.exp(0.1)]
    assert mirror_descent_step(w, g, 0.1).tolist() == pytest.approx([r / sum(raw) for r in raw])
    assert mirror_descent_step(w, g + 7.0, 0.1).tolist() == pytest.approx(
        mirror_descent_step(w, g, 0.1).tolist()
    )  # only gradient differences move the weights


def _toy(seed=0, m=3):
    """Linear peers z_i = x W_i (float64) and the WML losses as plain tensors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=g)
    params = [
        torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(m)
    ]
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)[:m]
    return x, y, params, w


def _inner_terms(x, params, a=0.5, t=2.0):
    z = [x @ p for p in params]
    return z, pairwise_kd(z, t, detach=True)


def _inner(x, y, params, w, a=0.5, t=2.0):
    z, kd = _inner_terms(x, params, a, t)
    return sum(
        (1 - a) * F.cross_entropy(z[i], y)
        + a * sum(w[j] * kd[i][j] for j in range(len(z)) if j != i)
        for i in range(len(z))
    )


def test_hypergradient_is_the_exact_derivative_through_one_sgd_step():
    x, y, params, w = _toy()
    eta, a = 0.3, 0.5
    # Ours: grad D_j before the step, the ensemble's gradients after it.
    _, kd = _inner_terms(x, params, a)
    d = [a * sum(kd[i][j] for i in range(3) if i != j) for j in range(3)]
    before = derivative_gradients(d, params)
    step = torch.autograd.grad(_inner(x, y, params, w), params)
    stepped = [(p - eta * g).detach().requires_grad_(True) for p, g in zip(params, step)]
    d_w, outer = ensemble_gradients(w, [x @ p for p in stepped], y, stepped)
    ours = hypergradient(d_w, outer, before, eta)
    # Reference: differentiate L_ens(theta'(w), w) through the step with autograd.
    w_leaf = w.clone().requires_grad_(True)
    grads = torch.autograd.grad(_inner(x, y, params, w_leaf), params, create_graph=True)
    unrolled = [p - eta * g for p, g in zip(params, grads)]
    outer_loss = F.cross_entropy(sum(w_leaf[i] * (x @ p) for i, p in enumerate(unrolled)), y)
    reference = torch.autograd.grad(outer_loss, w_leaf)[0]
    assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-13)
    first_order = hypergradient(d_w, outer, before, 0.0)
    assert (ours - first_order).abs().max() > 1e-4  # the second-order term matters here


@pytest.mark.parametrize("branches", [True, False])
def test_method_hypergradient_matches_finite_differences_of_the_real_step(branches):
    """End to end with BatchNorm networks: the hypergradient the method computes is dh/dw of
    h(w) = L_ens after one plain SGD step of the optimiser on the peers' losses."""
    lr = 0.05
    m0 = _method(num=3, branches=branches, weight_lr=0.0)
    m0.peer_weights.copy_(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    x, y = _digits(24, seed=5)
    views = [x] * m0.num_views

    def h(w):
        m = copy.deepcopy(m0)
        m.config.hypergrad = "first_order"  # only the networks' step matters here
        m.peer_weights.copy_(w)
        loss, _ = m.compute_loss(views, y, _ctx(lr=lr))
        params = [p for p in m.parameters()]
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
            _, z = member_outputs(list(m.nets.values()), views, branches)
            return F.cross_entropy(sum(w[i] * z[i] for i in range(3)), y).item()

    m = copy.deepcopy(m0)
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    loss, _ = m.compute_loss(views, y, _ctx(lr=lr))
    opt.zero_grad()
    loss.backward()
    opt.step()
    running = {k: b.clone() for k, b in m.named_buffers() if k.startswith("nets.")}
    m.after_step(_ctx(lr=lr))
    assert all(torch.equal(running[k], b) for k, b in m.named_buffers() if k in running)
    eps = 1e-5
    w = m0.peer_weights.clone()
    numeric = [
        (h(w + eps * torch.eye(3, dtype=w.dtype)[j]) - h(w - eps * torch.eye(3, dtype=w.dtype)[j]))
        / (2 * eps)
        for j in range(3)
    ]
    assert m.last_hypergrad.tolist() == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_weights_stay_on_the_simplex_during_training():
    m = _method(num=3, weight_lr=0.5)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x, y = _digits()
    history = []
    for step in range(6):
        used = m.peer_weights.clone()
        loss, terms = m.compute_loss([x], y, _ctx(step))
        assert torch.equal(torch.stack([terms[f"weight/peer_{i}"] for i in range(3)]), used)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(_ctx(step))
        w = m.peer_weights
        assert (w > 0).all() and w.sum().item() == pytest.approx(1.0, abs=1e-12)
        history.append(w.clone())
    assert not torch.allclose(history[-1], torch.full((3,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("hypergrad", ["exact", "first_order"])
def test_weights_move_towards_the_peer_with_lower_loss(hypergrad):
    m = _method(num=3, branches=False, hypergrad=hypergrad, weight_lr=0.2)
    x, y = _digits(48, seed=3)
    # Make peer_1 clearly better on this batch: fit it alone with cross-entropy first.
    good = m.nets["peer_1"]
    opt = torch.optim.Adam(good.parameters(), lr=0.03)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(good(x), y).backward()
        opt.step()
    with torch.no_grad():
        losses = [F.cross_entropy(net(x), y).item() for net in m.nets.values()]
    assert losses[1] < 0.1 * min(losses[0], losses[2])
    # Then train the group with WML as the trainer does: loss, SGD step, weight update.
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    weights = [m.peer_weights.clone()]
    for step in range(8):
        loss, _ = m.compute_loss([x, x, x], y, _ctx(step, lr=0.05))
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(_ctx(step, lr=0.05))
        weights.append(m.peer_weights.clone())
    w1 = [w[1].item() for w in weights]
    assert all(b > a for a, b in zip(w1, w1[1:])) and w1[-1] > 0.6
    assert weights[-1].argmax().item() == 1


def test_pruned_members_and_their_record():
    m = _method(num=3)
    assert keep_fractions(3, (), 0.5) == [1.0, 0.75, 0.5]
    assert [m.nets[f"peer_{i}"].head_width for i in range(3)] == [8, 6, 4]
    base = {"name": "cnn_digits", "kwargs": {"num_classes": 10, "width": 4}}
    assert m.member_arch("peer_0", base) == base
    assert m.member_arch("peer_2", base)["kwargs"] == {
        "num_classes": 10,
        "width": 4,
        "head_width": 4,
    }
    sizes = [count_parameters(m.nets[f"peer_{i}"]) for i in range(3)]
    assert sizes[0] > sizes[1] > sizes[2]
    assert m.nets["peer_2"].body[0] is m.nets["peer_0"].body[0]  # shared trunk
    assert set(m.extra_state()) == {"peer_weights", "last_hypergrad"}  # saved for resume
    shared = _method(num=3, init="shared")
    dense = shared.nets["peer_0"].state_dict()
    for key, value in shared.nets["peer_2"].state_dict().items():
        assert torch.equal(value, dense[key][tuple(slice(0, n) for n in value.shape)]), key


def test_losses_by_hand():
    m = _method(num=2, head_widths=(1.0, 1.0), alpha=0.25, temperature=2.0, weight_lr=0.0)
    m.peer_weights.copy_(torch.tensor([0.7, 0.3], dtype=torch.float64))
    x, y = _digits(16)
    loss, terms = m.compute_loss([x], y, _ctx())
    with torch.no_grad():
        z = [m.nets[f"peer_{i}"](x) for i in range(2)]
    expected_0 = 0.75 * F.cross_entropy(z[0], y) + 0.25 * 0.3 * kd_loss(z[0], z[1], 2.0)
    expected_1 = 0.75 * F.cross_entropy(z[1], y) + 0.25 * 0.7 * kd_loss(z[1], z[0], 2.0)
    assert terms["peer_0/loss"].item() == pytest.approx(expected_0.item(), rel=1e-10)
    assert loss.item() == pytest.approx((expected_0 + expected_1).item(), rel=1e-10)
    assert terms["ensemble/ce"].item() == pytest.approx(
        F.cross_entropy(0.7 * z[0] + 0.3 * z[1], y).item(), rel=1e-10
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ({"head_widths": (1.0, 0.5)}, "lists 2 widths for 3 peers"),
        ({"hypergrad": "second"}, "hypergrad must be"),
        ({"min_width": 0.0}, "head widths must lie in"),
        ({"weight_every": 0}, "weight_every must be at least 1"),
    ],
)
def test_bad_configurations(args, message):
    with pytest.raises(ConfigError, match=message):
        _method(**args)


def test_models_without_a_prunable_head_are_refused():
    with pytest.raises(ConfigError, match="prunable head"):
        build_method("wml", {}, lambda **kw: create("mlp", **kw), 2, "independent")
