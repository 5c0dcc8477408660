import numpy as np
import pytest
import torch

from okdph.hybrid import barycentre, convex_combination, fuse_, sample_coefficients
from okdph.models import create


def _students(n=3, seed=0):
    torch.manual_seed(seed)
    nets = [create("cnn_digits", width=4) for _ in range(n)]
    for i, net in enumerate(nets):  # distinct BN statistics and counters
        net.train()
        net(torch.randn(8 + i, 1, 8, 8))
    return nets


def test_convex_combination_is_exact_and_copies_integer_buffers():
    nets = _students()
    states = [n.state_dict() for n in nets]
    w = [0.2, 0.5, 0.3]
    out = convex_combination(states, w)
    for name, value in states[0].items():
        if value.is_floating_point():
            expected = w[0] * states[0][name] + w[1] * states[1][name] + w[2] * states[2][name]
            assert torch.equal(out[name], expected)
        else:
            assert torch.equal(out[name], value) and out[name] is not value
    assert int(out["body.1.num_batches_tracked"]) == 1


def test_barycentre_is_the_mean():
    states = [n.state_dict() for n in _students()]
    bary = barycentre(states)
    for name, value in states[0].items():
        if value.is_floating_point():
            mean = torch.stack([s[name] for s in states]).mean(0)
            assert torch.allclose(bary[name], mean, atol=1e-7)


def test_sample_coefficients():
    rng = np.random.default_rng(0)
    draws = np.stack([sample_coefficients(3, rng) for _ in range(4000)])
    assert np.allclose(draws.sum(1), 1) and (draws >= 0).all()
    # Dirichlet(1,1,1): each marginal is Beta(1, 2), mean 1/3, variance 1/18.
    assert np.allclose(draws.mean(0), 1 / 3, atol=0.02)
    assert np.allclose(draws.var(0), 1 / 18, atol=0.005)
    concentrated = np.stack([sample_coefficients(3, rng, alpha=50.0) for _ in range(500)])
    assert concentrated.var(0).max() < 0.01
    assert np.array_equal(sample_coefficients(4, rng, "mean"), np.full(4, 0.25))
    a = sample_coefficients(3, np.random.default_rng(7))
    assert np.array_equal(a, sample_coefficients(3, np.random.default_rng(7)))
    with pytest.raises(ValueError, match="unknown HWM sampling"):
        sample_coefficients(3, rng, "softmax")


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_fusion(gamma):
    nets = _students(2)
    target = convex_combination([n.state_dict() for n in nets], [0.3, 0.7])
    before = {k: v.clone() for k, v in nets[0].state_dict().items()}
    fuse_(nets[0], target, gamma)
    after = nets[0].state_dict()
    for name, old in before.items():
        if not old.is_floating_point():
            assert torch.equal(after[name], old)
        elif gamma == 1.0:
            assert torch.equal(after[name], target[name])
        elif gamma == 0.0:
            assert torch.equal(after[name], old)
        else:
            assert torch.allclose(after[name], 0.5 * old + 0.5 * target[name], atol=1e-7)
