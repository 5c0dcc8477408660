"""The adaptive Hessian T H T against a dense reference, its invariance, and its link to
adaptive sharpness (average case at any point, worst case at a stationary point)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from landscape.curvature.adaptive import AdaptiveHessianOperator
from landscape.curvature.eigenvalues import top_eigenvalues
from landscape.curvature.trace import hessian_trace
from landscape.geometry.sharpness import sharpness

CE = nn.functional.cross_entropy


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()


def _data(n: int = 40) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return [(x, torch.randint(0, 3, (n,), generator=g))]


def _dense(net: nn.Module, data, loss=CE) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense Hessian of the loss over all parameters, and |w| flattened alike."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    x, y = data[0]

    def f(theta):
        chunks, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            chunks[n] = theta[i : i + s.numel()].reshape(s)
            i += s.numel()
        return loss(functional_call(net, chunks, (x,)), y)

    return torch.autograd.functional.hessian(f, flat), flat.abs()


def test_products_equal_the_dense_adaptive_hessian():
    net, data = _net(), _data()
    hess, scale = _dense(net, data)
    op = AdaptiveHessianOperator(net, CE, data, eta=0.01)
    dense = (scale + 0.01)[:, None] * hess * (scale + 0.01)[None, :]
    eye = torch.eye(op.n, dtype=torch.float64)
    assert torch.allclose(op.matmat(eye), dense, atol=1e-12)


def test_top_eigenvalue_and_trace_match_the_dense_reference():
    net, data = _net(), _data()
    hess, scale = _dense(net, data)
    tht = scale[:, None] * hess * scale[None, :]
    top = top_eigenvalues(
        AdaptiveHessianOperator(net, CE, data), k=1, which="largest", tol=1e-8,
        show_progress=False,
    )  # fmt: skip
    assert top.values[0] == pytest.approx(float(torch.linalg.eigvalsh(tht).max()), rel=1e-6)
    trace = hessian_trace(AdaptiveHessianOperator(net, CE, data), rtol=0.01, show_progress=False)
    assert abs(trace.value - float(torch.trace(tht))) <= 4 * trace.stderr + 1e-9


def test_invariant_to_rescaling_a_relu_layer_while_the_hessian_is_not():
    net, data = _net(), _data()
    scaled = _net()
    c = 5.0
    with torch.no_grad():
        scaled[0].weight.mul_(c)
        scaled[0].bias.mul_(c)
        scaled[2].weight.div_(c)
    (h0, s0), (h1, s1) = _dense(net, data), _dense(scaled, data)
    adaptive = [torch.linalg.eigvalsh(s[:, None] * h * s[None, :]) for h, s in ((h0, s0), (h1, s1))]
    assert torch.allclose(adaptive[0], adaptive[1], atol=1e-10)
    assert float(torch.trace(h1)) > 2 * float(torch.trace(h0))  # lambda, trace: not invariant


def test_average_adaptive_sharpness_is_half_rho_squared_times_the_trace():
    # A smooth network: across a ReLU's kink the loss has no second-order expansion.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    data = _data()
    hess, scale = _dense(net, data)
    expected = 0.01**2 / 2 * float(torch.trace(scale[:, None] * hess * scale[None, :]))
    avg = sharpness(
        net, None, data, kind="average", rho=0.01, rtol=0.01, max_pairs=4096,
        show_progress=False,
    )  # fmt: skip
    assert abs(avg.value - expected) <= 4 * avg.stderr  # the O(rho^4) rest is far below


def test_worst_case_on_the_whole_set_at_a_stationary_point_is_half_rho_squared_lambda_max():
    # A least-squares fit: the gradient vanishes and the loss is exactly quadratic.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = torch.randn(60, 2, generator=g, dtype=torch.float64)
    net = nn.Linear(3, 2).double()
    design = torch.cat([x, torch.ones(60, 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution  # (4, 2)
    with torch.no_grad():
        net.weight.copy_(solution[:3].T)
        net.bias.copy_(solution[3])
    mse = nn.functional.mse_loss
    data = [(x, y)]
    hess, scale = _dense(net, data, loss=mse)
    lam = float(torch.linalg.eigvalsh(scale[:, None] * hess * scale[None, :]).max())
    rho = 0.05
    worst = sharpness(
        net, None, data, kind="worst", rho=rho, m=None, iterations=50, loss_fn=mse,
        show_progress=False,
    )  # fmt: skip
    assert worst.value == pytest.approx(rho**2 / 2 * lam, rel=0.02)
