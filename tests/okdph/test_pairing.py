"""Runs pair by seed: every method with the same seed and init rule starts from the same weights
and sees the same batches and per-student views; every preset accepts every method."""

import pytest
import torch

from okdph import trainer
from okdph.config import apply_overrides
from okdph.methods import list_methods
from okdph.presets import list_presets, preset_config
from okdph.run import load_checkpoint
from okdph.session import build_session, view_pipelines

PAIRED = ["independent", "dml", "kdcl", "okdph", "sam", "swa", "ema"]
FAST = ["epochs=1", "data.train_subset=256", "batch_size=64"]
_BUILD = trainer.build_session


def _first_batches(monkeypatch, cfg, tmp_path, name):
    """Initial student weights and the views of the first two batches a run trains on."""
    seen = []
    build = _BUILD

    def spying_session(c):
        s = build(c)
        original = s.method.compute_loss

        def compute_loss(views, y, ctx):
            seen.append(([v.clone() for v in views], y.clone()))
            return original(views, y, ctx)

        s.method.compute_loss = compute_loss
        return s

    monkeypatch.setattr(trainer, "build_session", spying_session)
    run, _ = trainer.train(cfg, tmp_path / name, progress=False, max_batches=2)
    models = load_checkpoint(run.path / "checkpoints" / "epoch_0000.pt")["models"]
    return [models[f"student_{i}"] for i in range(2)], seen


@pytest.mark.parametrize("init", ["shared", "independent"])
def test_same_seed_same_initial_weights_batches_and_student_views(monkeypatch, tmp_path, init):
    reference = None
    for method in PAIRED:
        cfg = apply_overrides(preset_config("demo"), [f"method={method}", f"init={init}", *FAST])
        weights, batches = _first_batches(monkeypatch, cfg, tmp_path, method)
        if reference is None:
            reference = (weights, batches)
            continue
        for a, b in zip(weights, reference[0], strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a), method
        for (views, y), (ref_views, ref_y) in zip(batches, reference[1], strict=True):
            assert torch.equal(y, ref_y), method
            # OKDPH has a third view (the HWM's); the students' two are the same everywhere.
            for v, r in zip(views[:2], ref_views[:2], strict=True):
                assert torch.equal(v, r), method


def test_view_rule_keeps_student_views_and_cycles_when_short():
    assert view_pipelines(["a", "b", "c"], 2) == ["a", "b"]
    assert view_pipelines(["a", "b"], 3) == ["a", "b", "a"]
    assert view_pipelines(["a"], 4) == ["a"] * 4


# Presets on files that may be absent (CIFAR, Fashion-MNIST) are tested on small files in their
# format: CIFAR here and in test_zoo, Fashion-MNIST in test_fashion_mnist.
SMALL = [p.name for p in list_presets() if not p.name.startswith(("cifar", "fmnist"))]
CIFAR = [p.name for p in list_presets() if p.name.startswith("cifar")]


@pytest.mark.parametrize("preset", SMALL)
def test_every_small_preset_trains_every_method_for_two_batches(tmp_path, preset):
    for method in list_methods():
        cfg = apply_overrides(preset_config(preset), [f"method={method}", *FAST])
        run, metrics = trainer.train(cfg, tmp_path / method, progress=False, max_batches=2)
        info = run.read_info()
        assert info["method"]["name"] == method and info["status"] == "complete"
        assert len(info["augment"]) == build_session(cfg).method.num_views
        assert all(v >= 0 for k, v in metrics.items() if k.endswith("/test_acc"))


@pytest.mark.parametrize("preset", CIFAR)
def test_every_cifar_preset_configures_every_method(preset):
    """Config and method for every CIFAR preset; models are built for the ResNet-32 presets only
    (the large architectures are built by their own tests)."""
    from okdph import models
    from okdph.methods import build_method

    for method in list_methods():
        cfg = apply_overrides(preset_config(preset), [f"method={method}"])
        cfg.validate()
        if cfg.model != "resnet32":
            continue
        kwargs = {"num_classes": 10, **cfg.model_args}

        def make(arch=cfg.model, kwargs=kwargs, **overrides):
            return models.create(arch, **{**kwargs, **overrides})

        built = build_method(method, cfg.method_args, make, cfg.num_students, cfg.init)
        assert len(view_pipelines(list(cfg.augment), built.num_views)) == built.num_views


def test_wml_reports_its_weighted_ensemble_and_the_plain_mean_beside_it():
    from okdph.evaluation import evaluate

    cfg = apply_overrides(preset_config("digits-wml"), FAST)
    s = build_session(cfg)
    with torch.no_grad():
        s.method.peer_weights.copy_(torch.tensor([0.7, 0.2, 0.1]))
    x, y = s.data.inputs("test")[:200], s.data.targets("test")[:200]
    out = evaluate(s.method, x, y)
    with torch.no_grad():
        s.method.eval()
        z = [s.method.nets[n](x) for n in s.method.ensemble_members()]
    weighted = sum(w * zi for w, zi in zip([0.7, 0.2, 0.1], z, strict=True))
    mean = torch.stack(z).mean(0)
    assert out["ensemble/test_acc"] == pytest.approx(
        float((weighted.argmax(1) == y).float().mean())
    )
    assert out["ensemble_mean/test_acc"] == pytest.approx(
        float((mean.argmax(1) == y).float().mean())
    )
    assert out["ensemble/test_loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(weighted, y)), rel=1e-5
    )
