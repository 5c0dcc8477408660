"""The loop and the run directory: layout, resume, divergence, student diversity."""

import json
import math
import os
import stat

import pytest
import torch

from okdph import trainer
from okdph.config import apply_overrides
from okdph.presets import preset_config
from okdph.run import RunDir, load_checkpoint
from okdph.session import build_session, describe_run

FAST = ["epochs=2", "data.train_subset=256", "batch_size=64", "model.width=8"]


def _cfg(preset="demo", *overrides):
    return apply_overrides(preset_config(preset), [*FAST, *overrides])


def _weights(path):
    return load_checkpoint(path)["models"]


def test_run_directory_layout(tmp_path):
    run, metrics = trainer.train(_cfg(), tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (
        info["format"] == "okdph-run" and info["status"] == "complete" and info["epochs_done"] == 2
    )
    assert info["method"]["name"] == "okdph"
    assert info["method"]["config"]["hwm_sampling"] == "dirichlet"  # paper mode, resolved
    assert info["method"]["config"]["hwm_grad"] == "through"
    assert "student_i/kd" in info["method"]["loss_terms"]
    assert info["arch"] == {"name": "cnn_digits", "kwargs": {"num_classes": 10, "width": 8}}
    assert set(info["members"]) == {"student_0", "student_1", "hybrid"}
    assert [v["pipeline"] for v in info["augment"]] == ["shift", "shift+scale", "shift+noise"]
    assert [v["view"] for v in info["augment"]] == ["student_0", "student_1", "hybrid"]
    assert info["init"] == "shared" and info["data"]["n_train"] == 256

    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    for member in ("student_0", "student_1", "hybrid", "ensemble"):
        assert 0.0 <= lines[-1][f"{member}/test_acc"] <= 1.0
        assert lines[-1][f"{member}/test_loss"] > 0
    assert lines[-1]["train/student_0/kd"] >= 0 and "train/hybrid/ce" in lines[-1]
    assert metrics["hybrid/test_acc"] == lines[-1]["hybrid/test_acc"]

    ckpts = run.checkpoints()
    assert [c.epoch for c in ckpts] == [0, 1, 2]
    raw = torch.load(ckpts[-1].path, weights_only=True)
    assert raw["epoch"] == 2 and raw["step"] == 2 * 4
    assert ckpts[-1].sidecar["members"] == ["student_0", "student_1", "hybrid"]
    # The checkpoint's hybrid is the barycentre of that checkpoint's students, exactly.
    models = raw["models"]
    for name, value in models["hybrid"].items():
        if value.is_floating_point():
            expected = 0.5 * models["student_0"][name] + 0.5 * models["student_1"][name]
            assert torch.equal(value, expected), name
    # Every member loads into the architecture named in run.json.
    from okdph.models import create

    net = create(info["arch"]["name"], **info["arch"]["kwargs"])
    for member in info["members"]:
        net.load_state_dict(models[member])


@pytest.mark.parametrize(
    "preset", ["demo", "digits-okddip", "digits-wml", "digits-swa", "digits-ema"]
)
def test_resume_gives_identical_weights(tmp_path, preset):
    cfg = _cfg(preset)
    trainer.train(cfg, tmp_path / "straight", progress=False)

    session = build_session(cfg)
    run = RunDir(tmp_path / "resumed")
    run.path.mkdir()
    t = trainer.Trainer(session, run, progress=False)
    run.write_info(describe_run(session))
    t.fit(stop_at=1)
    assert run.read_info()["status"] == "stopped"
    trainer.resume(run.path, progress=False)

    a = _weights(tmp_path / "straight" / "checkpoints" / "epoch_0002.pt")
    b = _weights(tmp_path / "resumed" / "checkpoints" / "epoch_0002.pt")
    for member in a:
        for key in a[member]:
            assert torch.equal(a[member][key], b[member][key]), (member, key)
    m1 = RunDir(tmp_path / "straight").read_metrics()
    m2 = RunDir(tmp_path / "resumed").read_metrics()
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [strip(r) for r in m1] == [strip(r) for r in m2]


def test_resume_after_a_crash_mid_epoch(tmp_path, monkeypatch):
    cfg = _cfg("demo", "epochs=3", "save_every=2")
    trainer.train(cfg, tmp_path / "straight", progress=False)

    calls = {"n": 0}
    original = trainer.Trainer.train_epoch

    def crashing(self):
        calls["n"] += 1
        if calls["n"] == 3:  # in the third epoch, after epoch 2's checkpoint
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(trainer.Trainer, "train_epoch", crashing)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, tmp_path / "crashed", progress=False)
    monkeypatch.setattr(trainer.Trainer, "train_epoch", original)
    run = RunDir(tmp_path / "crashed")
    assert [c.epoch for c in run.checkpoints()] == [0, 2]
    trainer.resume(run.path, progress=False)
    a = _weights(tmp_path / "straight" / "checkpoints" / "epoch_0003.pt")
    b = _weights(tmp_path / "crashed" / "checkpoints" / "epoch_0003.pt")
    assert all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1, 2, 3]


def test_divergence_names_epoch_and_member_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from okdph.methods.okdph import OKDPH

    original = OKDPH.compute_loss

    def poisoned(self, views, y, ctx):
        loss, terms = original(self, views, y, ctx)
        if ctx.epoch == 1 and ctx.batch == 2:  # student_1's loss overflows in epoch 2
            terms["student_1/loss"] = terms["student_1/loss"] * float("inf")
            loss = loss + terms["student_1/loss"]
        return loss, terms

    monkeypatch.setattr(OKDPH, "compute_loss", poisoned)
    run = RunDir(tmp_path / "run")
    with pytest.raises(trainer.TrainingDiverged) as err:
        trainer.train(_cfg("demo", "epochs=3"), run.path, progress=False)
    assert "the loss of student_1 became inf in epoch 2 (batch 3)" in str(err.value)
    assert "epoch_0001.pt" in str(err.value)
    assert [c.epoch for c in run.checkpoints()] == [0, 1]
    assert load_checkpoint(run.checkpoint_path(1))["epoch"] == 1
    assert run.read_info()["status"] == "diverged"
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1]


def _student_weights(run_dir, epoch=1):
    models = _weights(run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt")
    return [models[f"student_{i}"] for i in range(2)]


def _identical(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_students_do_not_collapse(tmp_path):
    """Shared init + identical inputs keeps reference-code OKDPH's students bit-identical (the HWM
    then equals every student); per-member augmentation is what makes them differ."""
    same = apply_overrides(
        preset_config("mnist1d"), ["epochs=1", "augment=none", "method.mode=code"]
    )
    trainer.train(same, tmp_path / "same", progress=False)
    s0, s1 = _student_weights(tmp_path / "same")
    assert _identical(s0, s1)
    # Code mode saves the last batch's HWM, built before its step: the students one step back.
    hybrid = _weights(tmp_path / "same" / "checkpoints" / "epoch_0001.pt")["hybrid"]
    gap = max(float((hybrid[k] - s0[k]).abs().max()) for k in s0 if s0[k].is_floating_point())
    assert 0 < gap < 0.05

    for preset in ("mnist1d", "demo"):
        cfg = apply_overrides(preset_config(preset), ["epochs=1"])
        trainer.train(cfg, tmp_path / preset, progress=False)
        s0, s1 = _student_weights(tmp_path / preset)
        assert not _identical(s0, s1), preset
        init0, init1 = _student_weights(tmp_path / preset, epoch=0)
        assert _identical(init0, init1)  # shared initialisation, as the reference code


@pytest.mark.parametrize("method", ["independent", "dml", "kdcl", "okdph"])
def test_every_method_runs_a_dry_run(tmp_path, method):
    cfg = _cfg("demo", f"method={method}", "epochs=1", "augment=shift")
    run, metrics = trainer.train(cfg, tmp_path / method, progress=False, max_batches=2)
    assert run.read_info()["method"]["name"] == method
    assert metrics["student_0/test_acc"] >= 0 and metrics["ensemble/test_loss"] > 0


@pytest.mark.slow
def test_independent_cnn1d_reaches_the_published_mnist1d_band(tmp_path):
    # Published mnist1d baselines: CNN about 94%; we require 90%+.
    cfg = apply_overrides(preset_config("mnist1d-independent"), ["num_students=1", "augment=shift"])
    _, metrics = trainer.train(cfg, tmp_path / "m1d", progress=False)
    assert metrics["student_0/test_acc"] >= 0.90


def test_channels_last_and_bf16_autocast_options(tmp_path):
    base = _cfg("demo", "epochs=1")
    _, plain = trainer.train(base, tmp_path / "plain", progress=False, max_batches=2)
    fast = apply_overrides(base, ["channels_last=true"])
    run, metrics = trainer.train(fast, tmp_path / "cl", progress=False, max_batches=2)
    info = run.read_info()
    assert info["config"]["channels_last"] is True and info["environment"]["amp"] == "off"
    # Same computation in another memory layout: equal up to float rounding.
    for key, value in plain.items():
        assert metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-3), key
    amp = apply_overrides(base, ["amp=true", "method=okddip", "num_students=3", "augment=shift"])
    run, metrics = trainer.train(amp, tmp_path / "amp", progress=False, max_batches=2)
    assert run.read_info()["environment"]["amp"] == "bfloat16 autocast"
    assert all(math.isfinite(v) for v in metrics.values())


def test_written_files_get_the_umask_mode_not_the_temporary_files(tmp_path):
    from okdph.run import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "shared.json", b"{}")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_an_unexpected_error_is_recorded_as_failed(tmp_path, monkeypatch):
    def broken(self):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(trainer.Trainer, "train_epoch", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.train(_cfg(), tmp_path / "run", progress=False)
    info = RunDir(tmp_path / "run").read_info()
    assert info["status"] == "failed" and info["error"] == "RuntimeError: out of memory, say"


def test_keep_every_keeps_the_last_and_every_kth_and_resumes(tmp_path):
    cfg = apply_overrides(_cfg(), ["epochs=5", "keep_every=2"])
    run, _ = trainer.train(cfg, tmp_path / "run", progress=False, max_batches=1)
    assert [c.epoch for c in run.checkpoints()] == [0, 2, 4, 5]
    assert sorted(p.name for p in run.checkpoint_dir.glob("*.json")) == [
        "epoch_0000.json",
        "epoch_0002.json",
        "epoch_0004.json",
        "epoch_0005.json",
    ]
    # A stopped run keeps its last checkpoint, so it resumes from there.
    stopped = trainer.Trainer(build_session(cfg), RunDir(tmp_path / "stopped"), progress=False)
    stopped.run.path.mkdir()
    stopped.run.write_info(describe_run(stopped.session))
    stopped.max_batches = 1
    stopped.fit(stop_at=3)
    assert [c.epoch for c in stopped.run.checkpoints()] == [0, 2, 3]
    resumed, _ = trainer.resume(stopped.run.path, progress=False, max_batches=1)
    assert [c.epoch for c in resumed.checkpoints()] == [0, 2, 4, 5]
