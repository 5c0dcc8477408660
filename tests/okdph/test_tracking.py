"""Curvature tracking during training: the stability thresholds against torch's SGD, a tracked
run trains exactly like an untracked one (and resumes), and the logged lines."""

import json

import pytest
import torch

from okdph import trainer
from okdph.config import ConfigError, apply_overrides
from okdph.presets import preset_config
from okdph.run import RunDir, load_checkpoint
from okdph.session import build_session, describe_run
from okdph.tracking import stability_threshold

FAST = ["epochs=3", "data.train_subset=256", "batch_size=64", "model.width=8"]
TRACK = ["track.every=1", "track.samples=64", "track.max_iter=12", "track.tol=0.05"]


def _diverges(curvature, lr, momentum, nesterov, wd, steps=3000):
    """Full-batch torch SGD on 0.5 * curvature * w^2 (weight decay wd): does |w| blow up?"""
    w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * w * w).backward()
        opt.step()
    return not bool(w.abs() < 1e3)


@pytest.mark.parametrize(
    "lr,momentum,nesterov,wd",
    [
        (0.1, 0.0, False, 0.0),
        (0.1, 0.9, False, 5e-4),
        (0.05, 0.9, True, 5e-4),
        (0.2, 0.5, True, 0.0),
    ],
)
def test_threshold_is_where_torch_sgd_starts_to_diverge(lr, momentum, nesterov, wd):
    t = stability_threshold(lr, momentum, nesterov, wd)
    assert not _diverges(t * 0.995, lr, momentum, nesterov, wd)
    assert _diverges(t * 1.005, lr, momentum, nesterov, wd)


def _states(path, epoch):
    return load_checkpoint(path / "checkpoints" / f"epoch_{epoch:04d}.pt")["models"]


def test_a_tracked_run_trains_exactly_like_an_untracked_one_and_resumes(tmp_path):
    base = apply_overrides(preset_config("demo"), FAST)
    trainer.train(base, tmp_path / "plain", progress=False)
    tracked = apply_overrides(base, TRACK)
    trainer.train(tracked, tmp_path / "tracked", progress=False)
    a, b = _states(tmp_path / "plain", 3), _states(tmp_path / "tracked", 3)
    for member in a:
        for key in a[member]:
            assert torch.equal(a[member][key], b[member][key]), (member, key)
    lines = RunDir(tmp_path / "tracked").read_metrics()
    curv = [r for r in lines if "curv/student_0/lambda_max" in r]
    assert [r["epoch"] for r in curv] == [0, 1, 2, 3]
    for r in curv:
        for m in ("student_0", "student_1", "hybrid"):
            assert r[f"curv/{m}/lambda_max"] > 0 and r[f"curv/{m}/lambda_max_bound"] >= 0
        assert "curv/hybrid/threshold" not in r  # no optimiser trains the HWM
        assert r["curv/student_0/threshold"] == pytest.approx(
            stability_threshold(r["curv/lr"], 0.9, False, 5e-4)
        )
    info = json.loads((tmp_path / "tracked" / "run.json").read_text())
    assert info["tracking"]["loss"].startswith("mean cross-entropy")
    plain = [r for r in RunDir(tmp_path / "plain").read_metrics()]
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [strip(r) for r in lines if "curv/lr" not in r] == [strip(r) for r in plain]

    # Resume from epoch 1: the same weights, one tracking line per point.
    session = build_session(tracked)
    run = RunDir(tmp_path / "resumed")
    run.path.mkdir()
    run.write_info(describe_run(session))
    trainer.Trainer(session, run, progress=False).fit(stop_at=1)
    trainer.resume(run.path, progress=False)
    c = _states(run.path, 3)
    for member in a:
        for key in a[member]:
            assert torch.equal(a[member][key], c[member][key]), (member, key)
    resumed = [r for r in run.read_metrics() if "curv/lr" in r]
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3]
    for r, s in zip(resumed, curv, strict=True):  # warm starts differ; values agree to tol
        assert r["curv/student_0/lambda_max"] == pytest.approx(
            s["curv/student_0/lambda_max"], rel=0.1
        )


def test_step_points_and_the_settings_checks(tmp_path):
    cfg = apply_overrides(
        preset_config("digits-independent"),
        [*FAST, "epochs=1", "track.steps=2", "track.samples=32", "track.max_iter=6"],
    )
    trainer.train(cfg, tmp_path / "steps", progress=False)
    curv = [r for r in RunDir(tmp_path / "steps").read_metrics() if "curv/lr" in r]
    assert [r["step"] for r in curv] == [0, 2, 4]
    assert curv[1]["epoch"] == pytest.approx(0.5)
    assert preset_config("demo").track.epoch_interval(30) == 0
    assert apply_overrides(preset_config("demo"), ["track.points=10"]).track.epoch_interval(30) == 3
    with pytest.raises(ConfigError, match="one of track.every"):
        apply_overrides(preset_config("demo"), ["track.every=2", "track.steps=5"]).validate()
    with pytest.raises(ConfigError, match="track.bn"):
        apply_overrides(preset_config("demo"), ["track.bn=sometimes"]).validate()
    with pytest.raises(ConfigError, match="unknown config key 'track.evry'"):
        apply_overrides(preset_config("demo"), ["track.evry=2"])


def test_tensorboard_logging_needs_its_package_or_writes_event_files(tmp_path):
    cfg = apply_overrides(preset_config("demo"), [*FAST, "epochs=1", "log.tensorboard=true"])
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs the tensorboard package"):
            trainer.train(cfg, tmp_path / "tb", progress=False, max_batches=1)
        return
    trainer.train(cfg, tmp_path / "tb", progress=False, max_batches=1)
    assert any((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
