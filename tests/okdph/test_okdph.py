"""OKDPH's two readings, checked with exact numbers on tiny float64 networks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from okdph.config import ConfigError
from okdph.methods import StepContext, build_method
from okdph.models import create


def _factory(bn=False):
    return lambda: create("mlp", input_dim=6, hidden=(5,), num_classes=3, bn=bn).double()


def _method(mode="paper", num=2, bn=False, **kwargs):
    torch.manual_seed(0)
    return build_method("okdph", {"mode": mode, **kwargs}, _factory(bn), num, "independent")


def _batch(n=16, views=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, 6, generator=g, dtype=torch.float64) for _ in range(views)]
    return xs, torch.randint(0, 3, (n,), generator=g)


def _ctx(seed=0, batch=0):
    return StepContext(epoch=0, batch=batch, step=0, epochs=1, rng=np.random.default_rng(seed))


@pytest.mark.parametrize("bn", [False, True])
def test_hwm_equals_the_convex_combination_of_its_students(bn):
    m = _method(num=3, bn=bn)
    r = np.array([0.2, 0.5, 0.3])
    state = m.hybrid_state(r)
    students = [s.state_dict() for s in m.students]
    for name, value in state.items():
        if value.is_floating_point():
            expected = 0.2 * students[0][name] + 0.5 * students[1][name] + 0.3 * students[2][name]
            assert torch.equal(value, expected), name
    # The functional HWM computes what a standalone network holding those weights computes.
    reference = _factory(bn)()
    reference.load_state_dict(state)
    x = _batch()[0][0]
    m.eval()
    reference.eval()
    assert torch.equal(m.hybrid_forward(x, r), reference(x))


def test_paper_mode_sends_each_student_the_hwm_gradient_scaled_by_its_coefficient():
    m = _method("paper", num=3, omega=0.0, beta=0.0)  # the loss is the HWM's cross-entropy only
    xs, y = _batch(views=4)
    loss, _ = m.compute_loss(xs, y, _ctx())
    loss.backward()
    r = m.coefficients
    assert not np.allclose(r, 1 / 3)  # Dirichlet draw, not the mean
    reference = _factory()()
    reference.load_state_dict(m.hybrid_state(r))
    F.cross_entropy(reference(xs[3]), y).backward()
    for coeff, student in zip(r, m.students):
        for (name, p), ref in zip(student.named_parameters(), reference.parameters()):
            assert torch.allclose(p.grad, coeff * ref.grad, rtol=1e-12, atol=1e-15), name


def test_code_mode_students_receive_no_hwm_gradient():
    m = _method("code", num=2, omega=0.0, beta=0.0)
    assert (m.config.hwm_sampling, m.config.hwm_grad) == ("mean", "detached")
    xs, y = _batch()
    loss, terms = m.compute_loss(xs, y, _ctx())
    loss.backward()
    assert np.array_equal(m.coefficients, [0.5, 0.5])
    assert terms["hybrid/ce"] > 0
    for student in m.students:
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in student.parameters())


def test_student_gradient_is_its_own_objective():
    """sum_i (omega ce_i + beta kd_i) + (1 - omega) ce_h differentiates to dL_i/dtheta_i."""
    m = _method("paper", num=2, omega=0.7, beta=0.4, temperature=2.0)
    xs, y = _batch()
    loss, _ = m.compute_loss(xs, y, _ctx(3))
    loss.backward()
    r = m.coefficients
    grads = [[p.grad.clone() for p in s.parameters()] for s in m.students]
    m.zero_grad()
    # Recompute student 0's own objective L_0 and differentiate it w.r.t. student 0 only.
    logits = [s(x) for s, x in zip(m.students, xs)]
    z_h = m.hybrid_forward(xs[2], r, grad=True)
    teacher = torch.stack(logits + [z_h]).mean(0).detach()
    t = 2.0
    kd = (
        F.kl_div(F.log_softmax(logits[0] / t, 1), F.softmax(teacher / t, 1), reduction="batchmean")
        * t
        * t
    )
    own = 0.7 * F.cross_entropy(logits[0], y) + 0.3 * F.cross_entropy(z_h, y) + 0.4 * kd
    expected = torch.autograd.grad(own, list(m.students[0].parameters()))
    for g, e in zip(grads[0], expected):
        assert torch.allclose(g, e, rtol=1e-10, atol=1e-14)


def test_batch_fusion_with_gamma_one_makes_every_student_the_hwm():
    m = _method("paper", num=3, fusion_every="1_batch", fusion_gamma=1.0, bn=True)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    xs, y = _batch(views=4)
    ctx = _ctx()
    loss, _ = m.compute_loss(xs, y, ctx)
    opt.zero_grad()
    loss.backward()
    opt.step()
    target = m.hybrid_state(m.coefficients)  # built from the stepped students
    m.after_step(ctx)
    for student in m.students:
        for name, value in student.state_dict().items():
            if value.is_floating_point():
                assert torch.equal(value, target[name]), name


def test_paper_epoch_fusion_happens_before_the_next_epoch_only_on_schedule():
    m = _method("paper", num=2, fusion_every="2_epoch", fusion_gamma=1.0, alpha=1e6)
    before = [p.clone() for p in m.students[0].parameters()]
    m.start_epoch(0, np.random.default_rng(0))  # nothing trained yet
    m.start_epoch(2, np.random.default_rng(0))  # after epoch index 1: not a fusion epoch
    m.end_epoch(1)  # the paper reading never fuses at the end of an epoch
    assert all(torch.equal(a, b) for a, b in zip(before, m.students[0].parameters()))
    m.start_epoch(1, np.random.default_rng(0))  # after epoch index 0: fuse (as the reference code)
    for a, b in zip(m.students[0].parameters(), m.students[1].parameters()):
        assert torch.equal(a, b)


def test_code_epoch_fusion_happens_at_the_end_of_the_epoch_towards_the_last_hwm():
    m = _method("code", num=2, fusion_every="2_epoch", fusion_gamma=1.0)
    before = [p.clone() for p in m.students[0].parameters()]
    m.start_epoch(1, np.random.default_rng(0))  # the code reading fuses in end_epoch only
    assert all(torch.equal(a, b) for a, b in zip(before, m.students[0].parameters()))
    target = {
        k: v + 1.0 if v.is_floating_point() else v for k, v in m.hybrid_state([0.5, 0.5]).items()
    }
    m.last_hybrid = target
    m.end_epoch(2)  # after epoch index 1: not a fusion epoch
    assert all(torch.equal(a, b) for a, b in zip(before, m.students[0].parameters()))
    m.end_epoch(1)  # after epoch index 0: fuse towards the last batch's HWM
    for name, p in m.students[1].named_parameters():
        assert torch.equal(p, target[name])
    saved = m.checkpoint_states()["hybrid"]  # the reference saves the last batch's HWM
    assert all(torch.equal(saved[k], v) for k, v in target.items())


def test_checkpointed_hybrid_is_the_barycentre_and_evaluated():
    m = _method(num=2, bn=True)
    states = m.checkpoint_states()
    assert set(states) == {"student_0", "student_1", "hybrid"}
    for name, value in states["hybrid"].items():
        if value.is_floating_point():
            assert torch.allclose(
                value, (states["student_0"][name] + states["student_1"][name]) / 2
            )
    assert set(m.eval_forwards()) == {"student_0", "student_1", "hybrid"}
    assert m.ensemble_members() == ["student_0", "student_1"]


@pytest.mark.parametrize(
    "args, message",
    [
        ({"mode": "fancy"}, "method.mode"),
        ({"fusion_every": "3_weeks"}, "fusion_every"),
        ({"fusion_gamma": 1.5}, "fusion_gamma"),
        ({"omgea": 0.5}, "did you mean method.omega"),
        ({"hwm_sampling": "softmax"}, "hwm_sampling"),
    ],
)
def test_bad_method_arguments(args, message):
    with pytest.raises(ConfigError, match=message):
        _method(**args)
