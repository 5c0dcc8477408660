"""OKDDip against a transcription of the official code (DefangChen/OKDDip: ``train_GL.py``'s
training loss, ``utils.KL_Loss``, the attention of ``models/model_cifar/resnet_GL.py`` /
``vgg_GL.py`` / ``MultiNet.py``), its VGG query/key initialisation, and WML against the formulas of
its module docstring: one batch, float64, losses, gradients and the weight update to 1e-10."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from okdph.methods import StepContext, build_method
from okdph.models import create

TOL = 1e-10


class _Tiny(nn.Module):
    """x -> tanh(stem x) (the trunk) -> tanh(head h) (pooled features) -> fc: a float64 network
    with the branch protocol (trunk / head_features / trunk_modules) and a prunable head."""

    trunk_modules = ("stem",)

    def __init__(self, num_classes=4, head_width=6, in_dim=5, trunk_dim=7):
        super().__init__()
        self.head_width = head_width
        self.stem = nn.Linear(in_dim, trunk_dim)
        self.head = nn.Linear(trunk_dim, head_width)
        self.fc = nn.Linear(head_width, num_classes)
        self.feature_dim = head_width
        self.double()

    @property
    def classifier(self):
        return self.fc

    def trunk(self, x):
        return torch.tanh(self.stem(x))

    def head_features(self, h):
        return torch.tanh(self.head(h))

    def features(self, x):
        return self.head_features(self.trunk(x))

    def forward(self, x):
        return self.fc(self.features(x))

    def head_width_kwargs(self, keep):
        return {"head_width": max(1, round(self.head_width * keep))}


def _batch(n=9, views=1, seed=1, classes=4):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, 5, generator=g, dtype=torch.float64) for _ in range(views)]
    return xs, torch.randint(0, classes, (n,), generator=g)


def _grads(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _assert_same_grads(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


# ---- OKDDip: transcription of train_GL.py / utils.py / the GL models -----------------------------


def _official_kl(student, teacher, t):
    """utils.KL_Loss: T^2 * batchmean KL with the teacher's probabilities raised by 1e-7."""
    target = torch.softmax(teacher / t, 1) + 1e-7
    per_sample = (target * (target.log() - torch.log_softmax(student / t, 1))).sum(1)
    return t * t * per_sample.mean()


def _official_consistency(epoch, length):
    """get_current_consistency_weight(epoch - start_consistency * num_epochs, length), start 0."""
    if length == 0:
        return 1.0
    phase = 1.0 - float(np.clip(epoch, 0.0, length)) / length
    return float(np.exp(-5.0 * phase * phase))


def _official_forward(peers, leader, query, key, x, branches):
    """What the official GL model (branches) or StuNet (--MulStu) returns: ``pro`` (B x C x P) the
    peers' logits, ``x_m`` = pro @ attention^T (B x C x P), and the leader's logits ``x_stu``."""
    if branches:  # one trunk computed once, heads on its output
        assert all(net.stem is peers[0].stem for net in (*peers, leader))
        shared = torch.tanh(peers[0].stem(x))
        trunk = [shared] * (len(peers) + 1)
    else:  # independent students, every one on the same batch
        trunk = [torch.tanh(net.stem(x)) for net in (*peers, leader)]
    feats = [torch.tanh(net.head(h)) for net, h in zip(peers, trunk)]
    pro = torch.stack([net.fc(f) for net, f in zip(peers, feats)], -1)
    q = torch.stack([f @ query.T for f in feats], 1)  # B x P x d/factor
    k = torch.stack([f @ key.T for f in feats], 1)
    energy = torch.einsum("npd,nqd->npq", q, k)
    attention = torch.softmax(energy, -1)  # softmax over the attended peer
    x_m = torch.einsum("ncq,npq->ncp", pro, attention)
    x_stu = leader.fc(torch.tanh(leader.head(trunk[-1])))
    return pro, x_m, x_stu


def _official_loss(pro, x_m, x_stu, y, t, alpha, consistency, leader_target_grad):
    """train_GL.py's loss; with ``leader_target_grad`` false the peer mean is detached."""
    peers = pro.shape[-1]
    loss_true = sum(F.cross_entropy(pro[:, :, i], y) for i in range(peers))
    loss_group = sum(_official_kl(pro[:, :, i], x_m[:, :, i], t) for i in range(peers))
    mean = pro.mean(2)
    if not leader_target_grad:
        mean = mean.detach()
    loss_leader = _official_kl(x_stu, mean, t)
    return loss_true + F.cross_entropy(x_stu, y) + alpha * consistency * (loss_group + loss_leader)


@pytest.mark.parametrize("epoch", [0, 30, 120])
@pytest.mark.parametrize("leader_target_grad", [True, False])
@pytest.mark.parametrize("branches", [True, False])
def test_okddip_loss_and_gradients_are_the_official_ones(branches, leader_target_grad, epoch):
    torch.manual_seed(0)
    config = {"branches": branches, "factor": 2, "leader_target_grad": leader_target_grad}
    method = build_method("okddip", config, lambda **kw: _Tiny(**kw), 4, "independent")
    method.double()
    assert method.num_views == 1  # one view for all members (branches and --MulStu alike)
    xs, y = _batch()
    ctx = StepContext(epoch=epoch, batch=0, step=0, epochs=300, rng=np.random.default_rng(0))
    total, terms = method.compute_loss(xs, y, ctx)
    peers = [method.nets[f"peer_{i}"] for i in range(3)]
    query, key = method.query_weight.weight, method.key_weight.weight
    pro, x_m, x_stu = _official_forward(peers, method.nets["leader"], query, key, xs[0], branches)
    consistency = _official_consistency(epoch, 80)  # --length 80 of --num_epochs 300
    expected = _official_loss(pro, x_m, x_stu, y, 3.0, 1.0, consistency, leader_target_grad)
    # (The logged kd_weight is a float32 scalar; the loss itself uses the exact float.)
    assert terms["kd_weight"].item() == pytest.approx(consistency, rel=1e-6)
    assert total.item() == pytest.approx(expected.item(), abs=TOL)
    params = list(method.parameters())
    assert any(p is query for p in params) and any(p is key for p in params)
    _assert_same_grads(_grads(total, params), _grads(expected, params))
    # The leader's distillation term alone, the part that the switch changes.
    mean = pro.mean(2) if leader_target_grad else pro.mean(2).detach()
    leader_kd = _official_kl(x_stu, mean, 3.0)
    assert terms["leader/kd"].item() == pytest.approx(leader_kd.item(), abs=TOL)
    _assert_same_grads(_grads(terms["leader/kd"], params), _grads(leader_kd, params))


# ---- OKDDip: the official query/key initialisation ---------------------------------------------


def _vgg(**kw):
    # A narrow VGG-16 (only the 256 pooled features matter here), cheap to build.
    return create("vgg16", widths=(4, 4, 4, 4, 256), hidden=8, **kw)


def _projection_weights(method):
    return torch.cat([method.query_weight.weight.flatten(), method.key_weight.weight.flatten()])


def test_okddip_vgg_branch_projections_are_drawn_as_the_official_vgg_gl():
    """vgg_GL.py: nn.init.normal_(weight, 0, 0.01) on every Linear, query/key included."""
    torch.manual_seed(0)
    method = build_method("okddip", {"branches": True}, _vgg, 3, "independent")
    assert method.query_weight.weight.shape == (32, 256) and method.query_weight.bias is None
    w = _projection_weights(method).double()  # 16384 draws
    assert w.mean().item() == pytest.approx(0.0, abs=4e-4)
    assert w.std().item() == pytest.approx(0.01, rel=0.03)
    # Normal, not uniform: excess kurtosis about 0 (a uniform law has -1.2).
    kurtosis = ((w - w.mean()) ** 4).mean() / w.var(unbiased=False) ** 2 - 3
    assert abs(kurtosis.item()) < 0.2
    assert not torch.equal(method.query_weight.weight, method.key_weight.weight)


@pytest.mark.parametrize(
    "factory, branches",
    [
        (_vgg, False),  # --MulStu: MultiNet.py creates Q/K after the students, no init loop
        (lambda **kw: create("resnet32", widths=(4, 4, 64), **kw), True),  # resnet_GL.py
    ],
)
def test_okddip_other_projections_keep_the_default_linear_init(factory, branches):
    torch.manual_seed(0)
    method = build_method("okddip", {"branches": branches}, factory, 3, "independent")
    w = _projection_weights(method).double()
    bound = 1 / method.query_weight.in_features**0.5  # kaiming_uniform(a=sqrt(5)) of nn.Linear
    assert w.abs().max().item() <= bound
    assert w.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)


# ---- WML: transcription of the formulas of the wml.py docstring ----------------------------------


def _kl(p_logits, q_logits, t):
    """T^2 KL(softmax(p/T) || softmax(q/T)), averaged over the batch."""
    p = torch.softmax(p_logits / t, 1)
    return (
        t
        * t
        * (p * (torch.log_softmax(p_logits / t, 1) - torch.log_softmax(q_logits / t, 1)))
        .sum(1)
        .mean()
    )


def _wml_logits(params, xs):
    """Peer i's logits from its parameter tuple (stem W, b, head W, b, fc W, b) and view."""
    out = []
    for (sw, sb, hw, hb, fw, fb), x in zip(params, xs, strict=True):
        h = torch.tanh(torch.tanh(x @ sw.T + sb) @ hw.T + hb)
        out.append(h @ fw.T + fb)
    return out


def _wml_inner(z, y, w, a, t):
    """sum_i L_i, L_i = (1 - a) CE(z_i, y) + a sum_{j != i} w_j T^2 KL(p_j || p_i), p_j detached."""
    m = len(z)
    return sum(
        (1 - a) * F.cross_entropy(z[i], y)
        + a * sum(w[j] * _kl(z[j].detach(), z[i], t) for j in range(m) if j != i)
        for i in range(m)
    )


@pytest.mark.parametrize("branches", [False, True])
def test_wml_loss_gradients_and_weight_update_are_the_documented_formulas(branches):
    a, t, eta, lr_w = 0.4, 2.0, 0.2, 0.7
    torch.manual_seed(0)
    config = {"branches": branches, "alpha": a, "temperature": t, "weight_lr": lr_w}
    method = build_method("wml", config, lambda **kw: _Tiny(**kw), 3, "independent").double()
    w0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    method.peer_weights.copy_(w0)
    nets = [method.nets[f"peer_{i}"] for i in range(3)]
    assert [net.head_width for net in nets] == [6, 4, 3]  # keep 1.0, 0.75, 0.5
    xs, y = _batch(views=method.num_views, seed=3)
    views = xs if not branches else xs * 3
    # The parameters as plain leaves (tied trunks give the same leaf to every peer).
    theta = [
        tuple(p.detach().clone().requires_grad_(True) for p in net.parameters()) for net in nets
    ]
    if branches:
        theta = [theta[0][:2] + th[2:] for th in theta]
    leaves = list({id(p): p for th in theta for p in th}.values())
    # L_in and its gradient at theta.
    z = _wml_logits(theta, views)
    inner = _wml_inner(z, y, w0, a, t)
    grad_inner = dict(zip(map(id, leaves), torch.autograd.grad(inner, leaves, retain_graph=True)))
    # D_j = a sum_{i != j} T^2 KL(p_j || p_i) (the derivative of L_in in w_j) and grad D_j(theta).
    d = [a * sum(_kl(z[j].detach(), z[i], t) for i in range(3) if i != j) for j in range(3)]
    grad_d = [_grads(d_j, leaves) for d_j in d]  # zero for peer j's own parameters
    # theta' = theta - eta grad L_in; L_ens(theta') = CE(sum_i w_i z_i(theta'), y).
    stepped = {id(p): (p - eta * grad_inner[id(p)]).detach().requires_grad_(True) for p in leaves}
    theta_next = [tuple(stepped[id(p)] for p in th) for th in theta]
    w_leaf = w0.clone().requires_grad_(True)
    z_next = _wml_logits(theta_next, views)
    ens = F.cross_entropy(sum(w_leaf[i] * z_next[i] for i in range(3)), y)
    next_leaves = [stepped[id(p)] for p in leaves]
    d_w, *grad_ens = torch.autograd.grad(ens, [w_leaf, *next_leaves])
    g = torch.stack(
        [
            d_w[j] - eta * sum((ge * gd).sum() for ge, gd in zip(grad_ens, grad_d[j]))
            for j in range(3)
        ]
    )
    w1 = w0 * torch.exp(-lr_w * g)
    w1 = w1 / w1.sum()
    # The unrolled derivative dL_ens(theta'(w), w)/dw is what g claims to be.
    w_var = w0.clone().requires_grad_(True)
    inner_w = _wml_inner(_wml_logits(theta, views), y, w_var, a, t)
    unrolled_grads = torch.autograd.grad(inner_w, leaves, create_graph=True)
    unrolled = {id(p): p - eta * gp for p, gp in zip(leaves, unrolled_grads)}
    z_unrolled = _wml_logits([tuple(unrolled[id(p)] for p in th) for th in theta], views)
    ens_unrolled = F.cross_entropy(sum(w_var[i] * z_unrolled[i] for i in range(3)), y)
    torch.testing.assert_close(torch.autograd.grad(ens_unrolled, w_var)[0], g, rtol=0, atol=TOL)

    # Ours, driven as the trainer does: loss, backward, plain SGD step, after_step.
    params = list(method.parameters())
    assert len(params) == len(leaves)
    ctx = StepContext(0, 0, 0, 10, np.random.default_rng(0), lr=eta)
    total, terms = method.compute_loss(xs, y, ctx)
    assert total.item() == pytest.approx(inner.item(), abs=TOL)
    for i in range(3):
        assert terms[f"weight/peer_{i}"].item() == w0[i].item()
    ours = _grads(total, params)
    # The method's parameters come in the order of the reference leaves (a tied trunk once).
    assert [p.shape for p in params] == [leaf.shape for leaf in leaves]
    assert all(torch.equal(p, leaf) for p, leaf in zip(params, leaves))
    _assert_same_grads(ours, [grad_inner[id(leaf)] for leaf in leaves])
    opt = torch.optim.SGD(params, lr=eta)
    opt.zero_grad()
    total.backward()
    opt.step()
    method.after_step(ctx)
    for p, leaf in zip(params, leaves):
        torch.testing.assert_close(p.detach(), stepped[id(leaf)].detach(), rtol=0, atol=TOL)
    torch.testing.assert_close(method.last_hypergrad, g.detach(), rtol=0, atol=TOL)
    torch.testing.assert_close(method.peer_weights, w1.detach(), rtol=0, atol=TOL)
    assert (w1 - w0).abs().max() > 1e-3  # the update is not negligible
