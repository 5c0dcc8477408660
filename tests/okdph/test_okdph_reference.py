"""OKDPH ``mode=code`` against a transcription of the released training loop (src/OKDPH.py).

The transcription keeps the reference's order of operations: build the HWM from the students
(mean of their state dicts), forward every network (the HWM in train mode on its own view),
then for each student in turn its loss, zero_grad, backward, its own optimiser's step and, at
batch granularity, its fusion with the HWM built before the step; at the end of an epoch the
schedulers step and, at epoch granularity, the students fuse with the last batch's HWM. Run on
the batches and views our trainer drew, in float64, the two must agree to 1e-10.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from okdph import models, trainer
from okdph.config import apply_overrides
from okdph.presets import preset_config
from okdph.run import load_checkpoint

_BUILD = trainer.build_session
BASE = [
    "method.mode=code",
    "epochs=2",
    "data.train_subset=128",
    "batch_size=64",
    "model.width=4",
    "method.fusion_gamma=0.5",
]


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _recorded_run(monkeypatch, tmp_path, overrides):
    batches = []

    def spying_session(cfg):
        s = _BUILD(cfg)
        original = s.method.compute_loss

        def compute_loss(views, y, ctx):
            views = [v.double() for v in views]
            batches.append((ctx.epoch, [v.clone() for v in views], y.clone()))
            return original(views, y, ctx)

        s.method.compute_loss = compute_loss
        return s

    monkeypatch.setattr(trainer, "build_session", spying_session)
    monkeypatch.setattr(trainer.Trainer, "evaluate", lambda self: {})  # test data is float32
    cfg = apply_overrides(preset_config("demo"), [*BASE, *overrides])
    run, _ = trainer.train(cfg, tmp_path / "run", progress=False)
    return cfg, run, batches


def _reference_loop(cfg, arch, initial, batches):
    """The released loop, transcribed (no test pass: it changes nothing)."""
    mcfg = cfg.method_args
    omega, beta, t, gamma = 0.8, 0.8, 4.0, mcfg["fusion_gamma"]
    every, level = mcfg["fusion_every"].split("_")
    every = int(every)
    nets = []
    for state in initial:
        net = models.create(arch["name"], **arch["kwargs"]).double()
        net.load_state_dict(state)
        nets.append(net)
    nets.append(copy.deepcopy(nets[0]))  # the HWM network
    o = cfg.optim
    opts = [
        torch.optim.SGD(n.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        for n in nets[:-1]
    ]
    schs = [
        torch.optim.lr_scheduler.MultiStepLR(opt, o.milestone_epochs(cfg.epochs), o.lr_decay)
        for opt in opts
    ]

    def fusion(net, hwm):
        mixed = {
            k: v * gamma + net.state_dict()[k] * (1 - gamma)
            if v.is_floating_point()
            else net.state_dict()[k]
            for k, v in hwm.state_dict().items()
        }
        net.load_state_dict(mixed)

    for epoch in range(cfg.epochs):
        for n in nets:
            n.train()
        for ii, (_, views, y) in enumerate(b for b in batches if b[0] == epoch):
            students = nets[:-1]
            mean = {
                k: sum(s.state_dict()[k] for s in students) / len(students)
                if v.is_floating_point()
                else v
                for k, v in students[0].state_dict().items()
            }
            nets[-1].load_state_dict(mean)
            outs = [net(views[i]) for i, net in enumerate(nets)]
            stable = torch.stack(outs).mean(0).detach()
            loss_hwm = F.cross_entropy(outs[-1], y)
            for i, net in enumerate(students):
                ce = F.cross_entropy(outs[i], y)
                kd = (
                    F.kl_div(
                        F.log_softmax(outs[i] / t, 1),
                        F.softmax(stable / t, 1),
                        reduction="batchmean",
                    )
                    * t
                    * t
                )
                loss = omega * ce + (1 - omega) * loss_hwm + beta * kd
                opts[i].zero_grad()
                loss.backward(retain_graph=True)
                opts[i].step()
                if level == "batch" and ii % every == 0:
                    fusion(net, nets[-1])
        for sch in schs:
            sch.step()
        if level == "epoch" and epoch % every == 0:
            for net in nets[:-1]:
                fusion(net, nets[-1])
    return nets


@pytest.mark.parametrize("init", ["shared", "independent"])
@pytest.mark.parametrize("every", ["1_batch", "1_epoch"])
def test_code_mode_is_the_released_loop(monkeypatch, tmp_path, float64, init, every):
    cfg, run, batches = _recorded_run(
        monkeypatch, tmp_path, [f"init={init}", f"method.fusion_every={every}"]
    )
    info = run.read_info()
    first = load_checkpoint(run.path / "checkpoints" / "epoch_0000.pt")["models"]
    initial = [first[f"student_{i}"] for i in range(2)]
    nets = _reference_loop(cfg, info["arch"], initial, batches)
    last = load_checkpoint(run.path / "checkpoints" / "epoch_0002.pt")["models"]
    for name, net in zip(["student_0", "student_1", "hybrid"], nets, strict=True):
        ours = last[name]
        for key, ref in net.state_dict().items():
            if ref.is_floating_point():
                torch.testing.assert_close(ours[key], ref, rtol=0, atol=1e-10, msg=f"{name} {key}")
    assert "last batch" in info["method"]["checkpoint_hybrid"]
    assert len(batches) == 4  # 2 epochs of 2 batches: the transcription saw every batch
