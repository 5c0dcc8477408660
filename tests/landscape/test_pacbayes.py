"""Magnitude-aware PAC-Bayes flatness: a closed-form case, and invariance to rescaling."""

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from landscape.measures.pacbayes import pac_bayes_alpha


def test_a_linear_classifier_matches_its_closed_form():
    # Two classes, logits (w0 x, w1 x) with w = (1, -1), every input x = 1 of class 0. Noise on
    # each weight has std alpha |w| (the biases, zero, get eps): the margin 2 shrinks by a
    # N(0, 2 alpha^2) variable, so the expected accuracy is Phi(sqrt(2) / alpha) and a drop of
    # 0.1 is reached at alpha* = sqrt(2) / Phi^-1(0.9).
    net = nn.Linear(1, 2).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net.bias.zero_()
    data = [(torch.ones(8, 1, dtype=torch.float64), torch.zeros(8, dtype=torch.long))]
    result = pac_bayes_alpha(net, data, target=0.1, tol=0.005, draws=4000, seed=3)
    expected = math.sqrt(2) / norm.ppf(0.9)
    assert result.base_accuracy == 1.0 and not result.capped and not result.folded
    assert abs(result.drop - 0.1) <= 0.005
    # The answer is exact for its draws; their Monte Carlo error moves it by about this much.
    assert result.alpha == pytest.approx(expected, rel=0.05)
    assert 0 < result.drop_stderr < 0.01


def _relu_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def _data(n=200):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    teacher = _relu_net(seed=5)
    with torch.no_grad():
        y = teacher(x).argmax(1)
    return [(x, y)]


def test_invariant_to_rescaling_a_relu_layer():
    net, data = _relu_net(seed=5), _data()
    before = pac_bayes_alpha(net, data, draws=16, seed=0)
    scaled = _relu_net(seed=5)
    with torch.no_grad():
        scaled[0].weight.mul_(4.0)
        scaled[0].bias.mul_(4.0)
        scaled[2].weight.div_(4.0)
    after = pac_bayes_alpha(scaled, data, draws=16, seed=0)
    assert before.base_accuracy == after.base_accuracy == 1.0
    # Relative noise is the same; only the absolute eps = 1e-3 differs.
    assert after.alpha == pytest.approx(before.alpha, rel=0.05)


def test_batchnorm_is_folded_so_an_equivalent_network_gets_the_same_alpha():
    def conv_bn(seed):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
        )
        with torch.no_grad():
            net[1].running_mean.uniform_(-0.5, 0.5)
            net[1].running_var.uniform_(0.5, 2.0)
        return net.eval()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 6, 6, generator=g)
    net = conv_bn(0)
    with torch.no_grad():
        y = net(x).argmax(1)
    data = [(x, y)]
    scaled = conv_bn(0)
    c = 3.0
    with torch.no_grad():  # conv x c, mean x c, var x c^2: the same function in eval mode
        scaled[0].weight.mul_(c)
        scaled[0].bias.mul_(c)
        scaled[1].running_mean.mul_(c)
        scaled[1].running_var.mul_(c**2)
    assert torch.allclose(net(x), scaled(x), atol=1e-4)
    a = pac_bayes_alpha(net, data, draws=8, seed=0)
    b = pac_bayes_alpha(scaled, data, draws=8, seed=0)
    assert a.folded and b.folded
    assert b.alpha == pytest.approx(a.alpha, rel=1e-3)
