"""DML and KDCL against transcriptions of the OKDPH repository's src/01_DML.py and src/03_KDCL.py:
each student's loss and gradient on one batch, float64, to 1e-10."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from okdph.methods import StepContext, build_method


def _factory():
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()


def _setup(name, num=3, **config):
    torch.manual_seed(0)
    method = build_method(name, config, _factory, num, "independent")
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(10, 6, generator=g, dtype=torch.float64) for _ in range(num)]
    y = torch.randint(0, 4, (10,), generator=g)
    return method, views, y


def _dml_reference(outs, y, i):
    kld = nn.KLDivLoss(reduction="batchmean")
    kl = sum(
        kld(F.log_softmax(outs[i], dim=1), F.softmax(outs[j], dim=1).detach())
        for j in range(len(outs))
        if j != i
    )
    return nn.CrossEntropyLoss()(outs[i], y) + kl / (len(outs) - 1)


def _kdcl_reference(outs, y, i, t=4.0, alpha=0.5):
    stable = torch.stack(outs).mean(0).detach()
    div = (
        F.kl_div(
            F.log_softmax(outs[i] / t, dim=1), F.softmax(stable / t, dim=1), reduction="batchmean"
        )
        * t
        * t
    )
    return (1 - alpha) * F.cross_entropy(outs[i], y) + alpha * div


@pytest.mark.parametrize(
    ("name", "reference"), [("dml", _dml_reference), ("kdcl", _kdcl_reference)]
)
def test_each_students_loss_and_gradient_are_the_reference(name, reference):
    method, views, y = _setup(name)
    ctx = StepContext(epoch=0, batch=0, step=0, epochs=1, rng=None)
    total, terms = method.compute_loss(views, y, ctx)
    outs = [net(x) for net, x in zip(method.students, views, strict=True)]
    for i, net in enumerate(method.students):
        params = list(net.parameters())
        expected = reference(outs, y, i)
        assert terms[f"student_{i}/loss"].item() == pytest.approx(expected.item(), abs=1e-10)
        ours = torch.autograd.grad(total, params, retain_graph=True)
        theirs = torch.autograd.grad(expected, params, retain_graph=True)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
