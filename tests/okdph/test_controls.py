"""The flat-minima controls SWA and EMA against transcriptions of the OKDPH repository's
src/12_SWA.py (+ utils/SWA_utils.py) and src/11_EMA.py, and KDCL's paper teachers against
per-sample transcriptions of their definitions; float64 on tiny networks with BatchNorm."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch import nn

from okdph import trainer
from okdph.config import ConfigError, apply_overrides
from okdph.methods import StepContext, build_method
from okdph.methods.kdcl import kdcl_teacher, linear_weights
from okdph.methods.swa import swa_learning_rate, swa_start
from okdph.presets import preset_config
from okdph.run import RunDir, load_checkpoint
from okdph.session import build_session, describe_run


def _factory():
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()


def _batches(num, seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            [torch.randn(n, 6, generator=g, dtype=torch.float64) for _ in range(num)],
            torch.randint(0, 3, (n,), generator=g),
        )
        for _ in range(3)
    ]


def _assert_same_state(a: nn.Module, b: nn.Module, counters: bool = True) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if x.is_floating_point():
            torch.testing.assert_close(x, y, rtol=0, atol=1e-12, msg=name)
        elif counters:
            assert torch.equal(x, y), name


# ---- EMA (mean teacher) ---------------------------------------------------------------------------
def _reference_ema(student, teacher, batches, epoch, lr=0.1, consistency=10.0, rampup=5.0):
    """11_EMA.py's train(): CE + ramped softmax-MSE consistency / B, SGD step, then
    update_ema_variables with alpha = min(1 - 1/(global_step + 1), 0.99) after the increment."""
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    for p in teacher.parameters():
        p.detach_()
    phase = 1.0 - np.clip(epoch, 0.0, rampup) / rampup
    weight = consistency * float(np.exp(-5.0 * phase * phase))
    global_step = 0
    for views, y in batches:
        out, ema_out = student(views[0]), teacher(views[1])
        p, q = F.softmax(out, dim=1), F.softmax(ema_out, dim=1)
        cons = weight * F.mse_loss(p, q, reduction="sum") / out.shape[1] / len(y)
        loss = F.cross_entropy(out, y) + cons
        opt.zero_grad()
        loss.backward()
        opt.step()
        global_step += 1
        alpha = min(1 - 1 / (global_step + 1), 0.99)
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.data.mul_(alpha).add_(s.data, alpha=1 - alpha)


@pytest.mark.parametrize("epoch", [0, 2, 7])
def test_ema_is_the_reference_mean_teacher(epoch):
    torch.manual_seed(0)
    method = build_method("ema", {"rampup_epochs": 5.0}, _factory, 1, "independent")
    method.train()
    student, teacher = copy.deepcopy(method.nets["student_0"]), copy.deepcopy(method.nets["ema_0"])
    assert not any(p.requires_grad for p in method.nets["ema_0"].parameters())
    batches = _batches(2)
    opt = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for step, (views, y) in enumerate(batches):
        ctx = StepContext(epoch=epoch, batch=step, step=step, epochs=300, rng=None, lr=0.1)
        loss, terms = method.compute_loss(views, y, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(ctx)
    student.train(), teacher.train()
    _reference_ema(student, teacher, batches, epoch)
    _assert_same_state(method.nets["student_0"], student)
    _assert_same_state(method.nets["ema_0"], teacher)  # BatchNorm statistics included


def test_ema_members_are_averages_outside_the_ensemble():
    method = build_method("ema", {}, _factory, 2, "independent")
    assert list(method.nets) == ["student_0", "student_1", "ema_0", "ema_1"]
    assert method.num_views == 4 and method.ensemble_members() == ["student_0", "student_1"]
    assert method.member_role("ema_1") == "average" and method.member_role("student_0") == "network"
    with pytest.raises(ConfigError, match="consistency_type"):
        build_method("ema", {"consistency_type": "l1"}, _factory, 1, "independent")


# ---- SWA ----------------------------------------------------------------------------------------
def _reference_schedule(epoch, swa_start=241, swa_lr=0.001, lr_init=0.1):
    t = epoch / swa_start
    lr_ratio = swa_lr / lr_init
    if t <= 0.5:
        factor = 1.0
    elif t <= 0.9:
        factor = 1.0 - (1.0 - lr_ratio) * (t - 0.5) / 0.4
    else:
        factor = lr_ratio
    return lr_init * factor


def test_swa_schedule_and_start_are_the_references():
    assert swa_start(0, 300) == 241 and swa_start(0, 30) == 24 and swa_start(5, 30) == 5
    for epoch in range(300):
        assert swa_learning_rate(epoch, 241, 0.1, 0.01) == pytest.approx(
            _reference_schedule(epoch), rel=1e-15, abs=0
        )
    method = build_method("swa", {}, _factory, 1, "independent")
    assert method.learning_rate(250, 300, 0.1) == pytest.approx(0.001)
    off = build_method("swa", {"own_schedule": False}, _factory, 1, "independent")
    assert off.learning_rate(250, 300, 0.1) is None


def _reference_bn_update(batches, model):
    """SWA_utils.bn_update: reset the statistics, then a cumulative average (momentum b/(n+b))."""
    model.train()
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    momenta = {m: m.momentum for m in layers}
    for m in layers:
        m.running_mean = torch.zeros_like(m.running_mean)
        m.running_var = torch.ones_like(m.running_var)
    n = 0
    with torch.no_grad():
        for x in batches:
            b = x.shape[0]
            for m in layers:
                m.momentum = b / (n + b)
            model(x)
            n += b
    for m in layers:
        m.momentum = momenta[m]


def test_swa_averages_and_recomputes_batchnorm_as_the_reference():
    torch.manual_seed(0)
    method = build_method("swa", {"start_epoch": 2}, _factory, 1, "independent")
    method.learning_rate(0, 5, 0.1)
    student = method.nets["student_0"]
    g = torch.Generator().manual_seed(3)
    data = [torch.randn(10, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    reference, n = None, 0
    for epochs_done in range(1, 6):
        with torch.no_grad():  # stands for an epoch of training
            for p in student.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64))
            student.train()
            student(data[0])
        method.after_epoch(epochs_done, lambda view: iter(data))
        if epochs_done < 2:  # before the start: a copy of the student
            _assert_same_state(method.nets["swa_0"], student)
            continue
        if reference is None:
            reference = copy.deepcopy(student)
        for r, p in zip(reference.parameters(), student.parameters()):  # moving_average
            r.data *= 1.0 - 1.0 / (n + 1)
            r.data += p.data / (n + 1)
        n += 1
        _reference_bn_update(data, reference)
        # num_batches_tracked is reset by torch's update_bn, not by the reference (unused by both)
        _assert_same_state(method.nets["swa_0"], reference, counters=False)
    assert int(method.models_averaged) == 4


def test_swa_run_resumes_mid_average_and_records_roles(tmp_path):
    cfg = apply_overrides(
        preset_config("digits-swa"),
        ["epochs=4", "method.start_epoch=2", "data.train_subset=256", "batch_size=64"],
    )
    trainer.train(cfg, tmp_path / "straight", progress=False)
    session = build_session(cfg)
    run = RunDir(tmp_path / "resumed")
    run.path.mkdir()
    run.write_info(describe_run(session))
    trainer.Trainer(session, run, progress=False).fit(stop_at=3)
    trainer.resume(run.path, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "epoch_0004.pt")["models"]
    b = load_checkpoint(run.path / "checkpoints" / "epoch_0004.pt")["models"]
    for member in a:
        for key in a[member]:
            assert torch.equal(a[member][key], b[member][key]), (member, key)
    info = RunDir(tmp_path / "straight").read_info()
    assert info["members"]["swa_1"]["role"] == "average"
    key = next(k for k, v in a["swa_0"].items() if v.is_floating_point())
    assert not torch.equal(a["swa_0"][key], a["student_0"][key])  # averaged, not a copy
    lrs = [r["lr"] for r in RunDir(tmp_path / "straight").read_metrics()[1:]]
    assert lrs == pytest.approx([swa_learning_rate(e, 2, 0.1, 0.01) for e in range(4)])


# ---- KDCL's teachers ----------------------------------------------------------------------------
def _logits(num=3, n=12, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n, c, generator=g, dtype=torch.float64) * 2 for _ in range(num)
    ], torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("seed", range(3))
def test_naive_and_minlogit_teachers_follow_their_per_sample_definitions(seed):
    logits, y = _logits(seed=seed)
    naive = kdcl_teacher(logits, y, "naive")
    minlogit = kdcl_teacher(logits, y, "minlogit")
    for n in range(len(y)):
        ces = [-F.log_softmax(z[n], 0)[y[n]].item() for z in logits]
        assert torch.equal(naive[n], logits[int(np.argmin(ces))][n])
        for c in range(logits[0].shape[1]):
            expected = min(float(z[n, c] - z[n, y[n]]) for z in logits)
            assert minlogit[n, c].item() == pytest.approx(expected, abs=1e-14)
        assert minlogit[n, y[n]].item() == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_linear_teacher_weights_are_the_simplex_minimiser(seed):
    logits, y = _logits(num=2, seed=seed)

    def ce(a):
        return F.cross_entropy(a * logits[0] + (1 - a) * logits[1], y).item()

    best = minimize_scalar(ce, bounds=(0, 1), method="bounded", options={"xatol": 1e-10})
    candidates = [best.x, 0.0, 1.0]
    a = min(candidates, key=ce)
    w = linear_weights(torch.stack(logits), y)
    assert w.sum() == pytest.approx(1.0, abs=1e-12) and (w >= 0).all()
    assert ce(w[0]) <= ce(a) + 1e-9
    assert w[0] == pytest.approx(a, abs=1e-4)


def test_linear_teacher_with_three_students_satisfies_the_kkt_conditions():
    logits, y = _logits(num=3, seed=5)
    stacked = torch.stack(logits)
    w = torch.tensor(linear_weights(stacked, y), requires_grad=True)
    F.cross_entropy(torch.tensordot(w, stacked, dims=1), y).backward()
    grad = w.grad.numpy()
    support = w.detach().numpy() > 1e-8
    # On the simplex: equal partial derivatives on the support, none smaller off it.
    assert np.ptp(grad[support]) < 1e-6
    assert (grad[~support] >= grad[support].min() - 1e-6).all()


@pytest.mark.parametrize("teacher", ["mean", "naive", "minlogit", "linear"])
def test_kdcl_losses_and_gradients_with_each_teacher(teacher):
    torch.manual_seed(0)
    method = build_method("kdcl", {"teacher": teacher}, _factory, 3, "independent")
    method.train()
    refs = [copy.deepcopy(net) for net in method.students]
    views, y = _batches(3)[0]
    ctx = StepContext(epoch=0, batch=0, step=0, epochs=1, rng=None)
    loss, _ = method.compute_loss(views, y, ctx)
    loss.backward()
    outs = [net(x) for net, x in zip(refs, views)]
    t = kdcl_teacher([o.detach() for o in outs], y, teacher)
    total = 0.0
    for z in outs:
        kd = F.kl_div(F.log_softmax(z / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
        total = total + 0.5 * F.cross_entropy(z, y) + 0.5 * kd
    total.backward()
    assert loss.item() == pytest.approx(total.item(), abs=1e-10)
    for net, ref in zip(method.students, refs, strict=True):
        for p, r in zip(net.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p.grad, r.grad, rtol=0, atol=1e-10)
    assert method.describe()["teacher_source"].startswith(
        "KDCL paper" if teacher != "mean" else "OKDPH"
    )
