"""When the test split is evaluated (`eval_test_from`) and the stopping rule on the students'
training loss (`stop_at_loss`): what metrics.jsonl, the checkpoint sidecars and run.json hold."""

import json

import pytest
import torch

from okdph import trainer
from okdph.config import ConfigError, apply_overrides
from okdph.presets import preset_config
from okdph.run import RunDir, load_checkpoint
from okdph.session import build_session, describe_run

FAST = ["data.train_subset=128", "batch_size=64", "model.width=4"]


def _cfg(*overrides, preset="demo"):
    return apply_overrides(preset_config(preset), [*FAST, *overrides])


def _tested_epochs(run):
    return [r["epoch"] for r in run.read_metrics() if "student_0/test_acc" in r]


def _sidecar(run, epoch):
    return json.loads((run.path / "checkpoints" / f"epoch_{epoch:04d}.json").read_text())


def test_default_schedule_tests_every_epoch(tmp_path):
    run, metrics = trainer.train(_cfg("epochs=3"), tmp_path / "run", progress=False)
    assert _tested_epochs(run) == [0, 1, 2, 3]
    assert all("student_0/test_acc" in _sidecar(run, e)["metrics"] for e in range(4))
    assert "time/test_s" in run.read_metrics()[-1]


def test_last_quarter_schedule_tests_from_that_epoch_and_always_the_last(tmp_path):
    cfg = _cfg("epochs=8", "eval_test_from=0.75", "keep_every=4")
    run, metrics = trainer.train(cfg, tmp_path / "run", progress=False)
    assert _tested_epochs(run) == [6, 7, 8]
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == list(range(9))  # training is logged every epoch
    assert all("train/student_0/ce" in r for r in records[1:])
    assert "time/test_s" not in records[3] and "time/test_s" in records[-1]
    # Kept checkpoints: 0 and 4 (untested, empty metrics) and the last, which has every member.
    assert [c.epoch for c in run.checkpoints()] == [0, 4, 8]
    assert _sidecar(run, 4)["metrics"] == {}
    last = run.last_checkpoint().sidecar["metrics"]
    for member in ("student_0", "student_1", "hybrid", "ensemble"):
        assert 0 <= last[f"{member}/test_acc"] <= 1
    assert metrics == last  # what train() returns is the last evaluation
    only_last = _cfg("epochs=3", "eval_test_from=1")
    run, _ = trainer.train(only_last, tmp_path / "last", progress=False)
    assert _tested_epochs(run) == [3]


def test_the_schedule_never_changes_training(tmp_path):
    weights = []
    for name, frac in (("every", "0"), ("last", "1")):
        run, _ = trainer.train(
            _cfg("epochs=2", f"eval_test_from={frac}"), tmp_path / name, progress=False
        )
        weights.append(load_checkpoint(run.last_checkpoint().path)["models"])
    for member, state in weights[0].items():
        assert all(torch.equal(v, weights[1][member][k]) for k, v in state.items()), member


def test_resuming_keeps_the_schedule(tmp_path):
    cfg = _cfg("epochs=4", "eval_test_from=0.5")
    session = build_session(cfg)
    run = RunDir(tmp_path / "run")
    run.write_info(describe_run(session))
    trainer.Trainer(session, run, progress=False).fit(stop_at=1)
    trainer.resume(tmp_path / "run", progress=False)
    assert _tested_epochs(RunDir(tmp_path / "run")) == [2, 3, 4]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("eval_test_from=1.5", "eval_test_from must be a fraction of the epochs in [0, 1]"),
        ("eval_test_from=-0.1", "eval_test_from must be a fraction"),
        ("stop_at_loss=0", "stop_at_loss must be positive (or None), not 0"),
    ],
)
def test_bad_values_are_config_errors(override, fragment):
    with pytest.raises(ConfigError) as err:
        _cfg(override).validate()
    assert fragment in str(err.value)


def test_stop_at_loss_stops_at_the_first_epoch_below_it(tmp_path):
    cfg = _cfg("epochs=6", "eval_test_from=1", "save_every=4", "stop_at_loss=10")
    run, metrics = trainer.train(cfg, tmp_path / "run", progress=False)
    info = run.read_info()
    assert info["status"] == "complete" and info["epochs_done"] == 1
    stopped = info["stopped_at_loss"]
    assert stopped["epoch"] == 1 and stopped["stop_at_loss"] == 10
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [0, 1]
    # The students' mean cross-entropy, without the hybrid's.
    last = records[-1]
    students = (last["train/student_0/ce"] + last["train/student_1/ce"]) / 2
    assert last["train/students_ce"] == pytest.approx(students) == stopped["students_ce"]
    assert last["train/students_ce"] != pytest.approx((2 * students + last["train/hybrid/ce"]) / 3)
    # The stopping epoch is checkpointed (save_every notwithstanding) and tested.
    assert [c.epoch for c in run.checkpoints()] == [0, 1]
    assert "student_1/test_acc" in run.last_checkpoint().sidecar["metrics"]
    assert metrics == run.last_checkpoint().sidecar["metrics"]
    # Resuming a stopped run trains nothing more.
    trainer.resume(tmp_path / "run", progress=False)
    assert [c.epoch for c in RunDir(tmp_path / "run").checkpoints()] == [0, 1]


def test_stop_at_loss_out_of_reach_trains_every_epoch(tmp_path):
    cfg = _cfg("epochs=2", "stop_at_loss=1e-6", preset="digits-ema")
    run, _ = trainer.train(cfg, tmp_path / "run", progress=False)
    info = run.read_info()
    assert info["epochs_done"] == 2 and "stopped_at_loss" not in info
    assert info["config"]["stop_at_loss"] == 1e-6
    for r in run.read_metrics()[1:]:
        # The students' cross-entropy alone: EMA's mean teachers (role "average") are left out.
        students = (r["train/student_0/ce"] + r["train/student_1/ce"]) / 2
        assert r["train/students_ce"] == pytest.approx(students)
        assert r["train/ema_0/ce"] != pytest.approx(r["train/student_0/ce"])
    plain, _ = trainer.train(_cfg("epochs=1"), tmp_path / "plain", progress=False)
    assert "train/students_ce" not in plain.read_metrics()[-1]  # off: outputs as before


def test_stop_at_loss_needs_a_method_that_logs_cross_entropy(tmp_path, monkeypatch):
    session = build_session(_cfg("epochs=1", "stop_at_loss=0.1", "method=dml"))
    monkeypatch.setattr(type(session.method), "loss_terms", {"student_i/loss": "something"})
    with pytest.raises(ConfigError, match="stop_at_loss needs a method that logs"):
        trainer.check_stop_rule(session)
