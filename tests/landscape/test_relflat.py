"""Relative flatness against its definition on a dense Hessian, and its invariance."""

import pytest
import torch
from torch import nn

from landscape.core.errors import LandscapeError
from landscape.measures.relflat import relative_flatness


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double().eval()


def _data(seed: int = 1, n: int = 24) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[:10], y[:10]), (x[10:], y[10:])]  # unequal batches: a sample-weighted mean


def _by_definition(model: nn.Sequential, data) -> float:
    """sum_{s,s'} <w_s, w_s'> Tr(H_ss') with H the dense Hessian of the mean cross-entropy
    with respect to the output layer's weight matrix."""
    x = torch.cat([b for b, _ in data])
    y = torch.cat([t for _, t in data])
    body, head = model[:-1], model[-1]
    w0 = head.weight.detach().clone()

    def loss(w):
        logits = body(x) @ w.T + head.bias
        return nn.functional.cross_entropy(logits, y)

    hess = torch.autograd.functional.hessian(loss, w0)  # [s, j, s', j']
    block_traces = torch.einsum("ajbj->ab", hess)
    return float((w0 @ w0.T * block_traces).sum())


def test_closed_form_equals_the_definition_on_a_dense_hessian():
    model, data = _model(), _data()
    value, layer = relative_flatness(model, data)
    assert layer == "2"
    assert value == pytest.approx(_by_definition(model, data), rel=1e-10)


def test_invariant_to_rescaling_the_layer_and_its_input_while_the_hessian_is_not():
    model, data = _model(), _data()
    before, _ = relative_flatness(model, data)
    scaled = _model()
    c = 7.0
    with torch.no_grad():  # ReLU is positively homogeneous: the function is unchanged
        scaled[0].weight.mul_(c)
        scaled[0].bias.mul_(c)
        scaled[2].weight.div_(c)
    x = data[0][0]
    assert torch.allclose(model(x), scaled(x), atol=1e-12)
    after, _ = relative_flatness(scaled, data)
    assert after == pytest.approx(before, rel=1e-10)
    # The output layer's Hessian trace is not invariant: it grows by c^2.
    x_all = torch.cat([b for b, _ in data])
    y_all = torch.cat([t for _, t in data])

    def trace(net):
        w0 = net[2].weight.detach().clone()

        def loss(w):
            return nn.functional.cross_entropy(net[:-1](x_all) @ w.T + net[2].bias, y_all)

        return float(torch.einsum("ajaj->", torch.autograd.functional.hessian(loss, w0)))

    assert trace(scaled) == pytest.approx(c**2 * trace(model), rel=1e-8)


def test_a_layer_that_does_not_make_the_logits_is_refused():
    model, data = _model(), _data()
    with pytest.raises(LandscapeError, match="does not produce the model's output"):
        relative_flatness(model, data, layer="0")
    with pytest.raises(LandscapeError, match="is not an nn.Linear"):
        relative_flatness(model, data, layer="1")


def test_the_output_layer_is_found_when_another_linear_is_registered_after_it():
    class Late(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(5, 3)
            self.projection = nn.Linear(5, 2)  # registered last, not on the output path

        def forward(self, x):
            return self.head(x)

    model = Late().double().eval()
    value, layer = relative_flatness(model, _data())
    assert layer == "head" and value > 0
