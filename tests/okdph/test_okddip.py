"""OKDDip against hand computations on tiny float64 networks: attention, targets, losses, the
ramp-up, and the direction of every gradient (the leader never teaches the peers)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from okdph.config import ConfigError
from okdph.methods import StepContext, build_method
from okdph.methods.okddip import aggregate, attention_weights, ramp_weight, soft_kl
from okdph.models import create


def _mlp(**kw):
    return create("mlp", input_dim=6, hidden=(8,), num_classes=3).double()


def _digits_cnn(**kw):
    return create("cnn_digits", width=4, **kw).double()


def _method(num=4, factory=_mlp, seed=0, **config):
    torch.manual_seed(seed)
    args = {"branches": False, "factor": 4, **config}
    return build_method("okddip", args, factory, num, "independent").double()


def _batch(n=5, views=4, shape=(6,), seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, *shape, generator=g, dtype=torch.float64) for _ in range(views)]
    return xs, torch.randint(0, 3, (n,), generator=g)


def _ctx(epoch=0, epochs=300):
    return StepContext(epoch, 0, 0, epochs, np.random.default_rng(0))


def test_attention_and_targets_match_a_hand_computation():
    m = _method(num=4, temperature=2.0, own_views=True)  # a view per network
    xs, y = _batch()
    peers = m.peers
    with torch.no_grad():
        h = [p.features(x) for p, x in zip(peers, xs)]
        z = [p(x) for p, x in zip(peers, xs)]
        Q, K = m.query_weight.weight.detach(), m.key_weight.weight.detach()  # (2, 8)
        alpha = m.attention(torch.stack(h, 1))
        targets = aggregate(alpha, torch.stack(z, 1))
        z_leader = m.nets["leader"](xs[3])
    for n in range(5):
        for a in range(3):
            energy = [sum((Q @ h[a][n])[k] * (K @ h[b][n])[k] for k in range(2)) for b in range(3)]
            norm = sum(math.exp(e) for e in energy)
            weights = [math.exp(e) / norm for e in energy]
            assert alpha[n, a].tolist() == pytest.approx(weights, rel=1e-12)
            target = sum(w * z[b][n] for w, b in zip(weights, range(3)))
            assert torch.allclose(targets[n, a], target, rtol=1e-12)
    # The method's losses use exactly these targets and the leader's mean-of-peers target.
    loss, terms = m.compute_loss(xs, y, _ctx(epoch=40, epochs=300))
    lam = math.exp(-5 * (1 - 40 / 80) ** 2)
    assert terms["kd_weight"].item() == pytest.approx(lam)

    def kl_by_hand(student, teacher):
        total = 0.0
        for n in range(5):
            p = [v + 1e-7 for v in F.softmax(teacher[n] / 2, 0).tolist()]
            q = F.softmax(student[n] / 2, 0).tolist()
            total += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))
        return 4 * total / 5

    expected = 0.0
    for a in range(3):
        kd = kl_by_hand(z[a], targets[:, a])
        assert terms[f"peer_{a}/kd"].item() == pytest.approx(kd, rel=1e-10)
        expected += F.cross_entropy(z[a], y).item() + lam * kd
    kd_leader = kl_by_hand(z_leader, sum(z) / 3)
    assert terms["leader/kd"].item() == pytest.approx(kd_leader, rel=1e-10)
    expected += F.cross_entropy(z_leader, y).item() + lam * kd_leader
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert terms["attention/self"].item() == pytest.approx(alpha.diagonal(0, 1, 2).mean().item())


def test_pure_helpers():
    q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    k = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    alpha = attention_weights(q, k)  # energies [[1, 0], [2, 2]]
    e = math.e
    assert alpha[0].flatten().tolist() == pytest.approx([e / (e + 1), 1 / (e + 1), 0.5, 0.5])
    z = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    assert aggregate(alpha, z)[0, 1].tolist() == pytest.approx([0.5, 1.5])
    assert ramp_weight(0, 80, 1.0) == pytest.approx(math.exp(-5))
    assert ramp_weight(79, 80, 2.0) == pytest.approx(2 * math.exp(-5 / 80**2))
    assert ramp_weight(80, 80, 2.0) == ramp_weight(300, 80, 2.0) == 2.0
    assert ramp_weight(0, 0, 0.5) == 0.5
    same = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    assert soft_kl(same, same, 3.0, 0.0).item() == pytest.approx(0.0, abs=1e-14)


def test_ramp_length_scales_with_the_run():
    assert _method().rampup(300) == pytest.approx(80)
    assert _method().rampup(30) == pytest.approx(8)
    assert _method(rampup_epochs=5).rampup(300) == 5


def _grad_norms(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [0.0 if g is None else g.abs().sum().item() for g in grads]


@pytest.mark.parametrize("branches", [False, True])
def test_the_leader_never_feeds_back_into_the_peers(branches):
    m = _method(num=4, factory=_digits_cnn, branches=branches, factor=2, leader_target_grad=False)
    xs, y = _batch(n=6, views=m.num_views, shape=(1, 8, 8))
    _, terms = m.compute_loss(xs, y, _ctx(epoch=100))
    leader = {id(p) for p in m.nets["leader"].parameters()}
    # What the peers own: their parameters outside the trunk they share with the leader, and Q/K.
    own = [p for peer in m.peers for p in peer.parameters() if id(p) not in leader]
    own += [m.query_weight.weight, m.key_weight.weight]
    assert all(g == 0.0 for g in _grad_norms(terms["leader/loss"], own))
    assert any(
        g > 0 for g in _grad_norms(terms["leader/loss"], list(m.nets["leader"].parameters()))
    )
    # The official code's attached leader target (the default) does feed back.
    m = _method(num=4, factory=_digits_cnn, branches=branches, factor=2)
    assert m.config.leader_target_grad is True
    _, terms = m.compute_loss(xs, y, _ctx(epoch=100))
    leader = {id(p) for p in m.nets["leader"].parameters()}
    own = [p for peer in m.peers for p in peer.parameters() if id(p) not in leader]
    assert any(g > 0 for g in _grad_norms(terms["leader/loss"], own))


def test_peer_targets_train_the_other_peers_and_the_attention():
    m = _method(num=4)
    xs, y = _batch()
    _, terms = m.compute_loss(xs, y, _ctx(epoch=100))
    others = list(m.peers[1].parameters()) + [m.query_weight.weight, m.key_weight.weight]
    assert all(g > 0 for g in _grad_norms(terms["peer_0/kd"], others))


def test_members_views_and_evaluation():
    m = _method(num=3, factory=_digits_cnn, branches=True)
    assert list(m.nets) == ["peer_0", "peer_1", "leader"]
    assert m.num_views == 1 and m.view_names() == ["all members"]
    assert m.ensemble_members() == ["peer_0", "peer_1"]
    assert m.nets["leader"].body[0] is m.nets["peer_0"].body[0]  # shared trunk
    assert m.nets["leader"].body[7] is not m.nets["peer_0"].body[7]  # own head
    assert set(m.extra_state()) == {"query_weight.weight", "key_weight.weight"}
    m.eval()
    x = _batch(n=3, views=1, shape=(1, 8, 8))[0][0]
    with torch.no_grad():
        for name, forward in m.eval_forwards().items():
            assert torch.allclose(forward(x), m.nets[name](x)), name
    assert _method(num=3, branches=False).num_views == 1  # one batch for all, as --MulStu
    assert _method(num=3, branches=False, own_views=True).num_views == 3


@pytest.mark.parametrize(
    "num, args, message",
    [
        (1, {}, "needs num_students >= 2"),
        (3, {"branches": True}, "has no shared-trunk layout"),
        (3, {"temperature": 0.0}, "temperature must be positive"),
        (3, {"rampup_epochs": -1}, "must not be negative"),
        (3, {"factr": 4}, "did you mean method.factor"),
    ],
)
def test_bad_configurations(num, args, message):
    with pytest.raises(ConfigError, match=message):
        _method(num=num, **args)
