"""SAM against a transcription of the OKDPH repository's SAM_utils.SAM (first_step/second_step)
and 13_SAM.py's loop, in float64 on a tiny network with BatchNorm."""

import copy

import pytest
import torch
from torch import nn

from okdph.config import ConfigError
from okdph.methods import StepContext, build_method
from okdph.methods.sam import smooth_cross_entropy


def _factory():
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()


def _reference_steps(net, batches, rho, adaptive, lr=0.1, momentum=0.9, wd=5e-4):
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    params = list(net.parameters())
    for x, y in batches:
        for m in net.modules():  # enable_running_stats
            if isinstance(m, nn.BatchNorm1d) and hasattr(m, "backup_momentum"):
                m.momentum = m.backup_momentum
        smooth_cross_entropy(net(x), y, 0.1).backward()
        with torch.no_grad():  # first_step
            norm = torch.norm(
                torch.stack([((p.abs() if adaptive else 1.0) * p.grad).norm(p=2) for p in params]),
                p=2,
            )
            scale = rho / (norm + 1e-12)
            old = [p.data.clone() for p in params]
            for p in params:
                p.add_((torch.pow(p, 2) if adaptive else 1.0) * p.grad * scale)
        opt.zero_grad()
        for m in net.modules():  # disable_running_stats
            if isinstance(m, nn.BatchNorm1d):
                m.backup_momentum, m.momentum = m.momentum, 0
        smooth_cross_entropy(net(x), y, 0.1).backward()
        for p, o in zip(params, old):  # second_step
            p.data = o
        opt.step()
        opt.zero_grad()
    return net


@pytest.mark.parametrize("adaptive", [True, False])
def test_sam_is_the_reference_update(adaptive):
    torch.manual_seed(0)
    method = build_method("sam", {"rho": 0.05, "adaptive": adaptive}, _factory, 2, "independent")
    method.train()
    refs = [copy.deepcopy(net) for net in method.students]
    opt = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(16, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (16,), generator=g),
        )
        for _ in range(3)
    ]
    for step, (x, y) in enumerate(batches):
        ctx = StepContext(epoch=0, batch=step, step=step, epochs=1, rng=None)
        loss, terms = method.compute_loss([x, x], y, ctx)
        opt.zero_grad()
        loss.backward()
        method.before_step(ctx)
        opt.step()
        assert terms["student_0/loss"] > terms["student_0/ce"] - 1e-12  # the ascent raises it
    for net, ref in zip(method.students, refs, strict=True):
        ref.train()
        _reference_steps(ref, batches, 0.05, adaptive)
        for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
            if a.is_floating_point():
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)
    for m in method.modules():  # the frozen pass leaves the momentum as it was
        if isinstance(m, nn.BatchNorm1d):
            assert m.momentum == 0.1


def test_smooth_cross_entropy_is_the_kl_to_the_smoothed_target():
    z = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    q = torch.full((5, 4), 0.1 / 3, dtype=torch.float64)
    q[torch.arange(5), y] = 0.9
    expected = (q * (q.log() - z.log_softmax(1))).sum(1).mean()
    assert float(smooth_cross_entropy(z, y, 0.1)) == pytest.approx(float(expected))
    assert float(smooth_cross_entropy(z, y, 0.0)) == pytest.approx(
        float(nn.functional.cross_entropy(z, y))
    )


def test_bad_sam_settings():
    with pytest.raises(ConfigError, match="method.rho"):
        build_method("sam", {"rho": -1.0}, _factory, 2, "independent")
