"""The CIFAR model zoo: parameter counts, reference names, branch members that export as plain
architectures, and a dry run of every preset (CIFAR ones on small files in CIFAR's format)."""

import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from okdph.cli import main
from okdph.methods import StepContext, build_method
from okdph.models import create
from okdph.models.branches import copy_leading_channels, member_outputs, tie_trunks
from okdph.models.small import count_parameters
from okdph.presets import list_presets
from okdph.run import RunDir

CIFAR = ("resnet32", "resnet110", "wrn_20_8", "vgg16", "densenet40_12")


def _vgg16_by_hand(classes):
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    convs += [(256, 512)] + [(512, 512)] * 5
    total = sum(9 * cin * cout + cout + 2 * cout for cin, cout in convs)  # conv + bias + BN
    return total + 2 * (512 * 512 + 512) + 512 * classes + classes


def _densenet40_12_by_hand(classes):
    total, c = 3 * 24 * 9, 24
    for block in range(3):
        for i in range(6):
            cin = c + 12 * i
            total += 2 * cin + cin * 48 + 2 * 48 + 48 * 12 * 9
        c += 6 * 12
        if block < 2:
            total += 2 * c + c * (c // 2)
            c //= 2
    return total + 2 * c + c * classes + classes


@pytest.mark.parametrize(
    "name, classes, published",
    # methods.md 1.6: the reference definitions' counts (rounded as published).
    [
        ("resnet32", 10, 0.467e6),
        ("resnet32", 100, 0.473e6),
        ("resnet110", 10, 1.148e6),
        ("resnet110", 100, 1.171e6),
        ("wrn_20_8", 10, 6.85e6),
        ("wrn_20_8", 100, 6.87e6),
        ("vgg16", 10, 15.25e6),
        ("vgg16", 100, 15.30e6),
        ("densenet40_12", 10, 0.176e6),
        ("densenet40_12", 100, 0.188e6),
    ],
)
def test_parameter_counts_match_the_reference_models(name, classes, published):
    count = count_parameters(create(name, num_classes=classes))
    assert abs(count / published - 1) < 0.01
    if name == "vgg16":
        assert count == _vgg16_by_hand(classes)
    if name == "densenet40_12":
        assert count == _densenet40_12_by_hand(classes)


@pytest.mark.parametrize(
    "name, present, absent",
    [
        (
            "vgg16",
            [
                "conv1.bias",
                "bn1.running_mean",
                "conv2.weight",
                "bn2.weight",
                "layer1.0.weight",
                "layer1.4.running_var",
                "layer2.6.bias",
                "layer4.7.num_batches_tracked",
                "classifier.0.weight",
                "classifier.3.bias",
                "classifier.6.weight",
            ],
            ["layer1.6.weight", "classifier.1.weight", "fc.weight"],
        ),
        (
            "densenet40_12",
            [
                "features.conv0.weight",
                "features.denseblock1.denselayer1.norm1.weight",
                "features.denseblock1.denselayer1.conv1.weight",
                "features.denseblock2.denselayer6.norm2.running_mean",
                "features.denseblock3.denselayer6.conv2.weight",
                "features.transition1.norm.bias",
                "features.transition2.conv.weight",
                "features.norm_final.running_var",
                "classifier.weight",
                "classifier.bias",
            ],
            ["features.transition3.conv.weight", "features.norm0.weight"],
        ),
    ],
)
def test_reference_parameter_names(name, present, absent):
    keys = set(create(name).state_dict())
    assert set(present) <= keys and not set(absent) & keys


@pytest.mark.parametrize("name", CIFAR)
def test_contract_features_classifier_and_batchnorm_by_type(name):
    torch.manual_seed(0)
    model = create(name, num_classes=100).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (2, model.feature_dim)
        assert torch.allclose(model.classifier(feats), model(x), atol=1e-5)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    running = [k for k in model.state_dict() if k.endswith("running_mean")]
    assert len(norms) == len(running) > 0


@pytest.mark.parametrize("name", ["resnet32", "vgg16", "densenet40_12", "cnn_digits", "cnn1d"])
def test_pruned_widths_rebuild_and_leading_channel_init(name):
    dense = create(name)
    kwargs = dense.head_width_kwargs(0.5)
    pruned = create(name, **json.loads(json.dumps(kwargs)))  # as read back from run.json
    assert count_parameters(pruned) < count_parameters(dense)
    assert pruned.feature_dim < dense.feature_dim
    copy_leading_channels(pruned, dense.state_dict())
    for key, value in pruned.state_dict().items():
        assert torch.equal(value, dense.state_dict()[key][tuple(slice(0, n) for n in value.shape)])
    # The trunk is untouched by head pruning, so pruned and dense members can share it.
    tie_trunks([dense, pruned])
    assert pruned.get_submodule(dense.trunk_modules[-1]) is dense.get_submodule(
        dense.trunk_modules[-1]
    )


def _inputs(name, n=4):
    shape = {"cnn_digits": (1, 8, 8), "cnn1d": (40,)}.get(name, (3, 32, 32))
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "method, name",
    [
        ("okddip", "resnet32"),
        ("okddip", "cnn1d"),
        ("wml", "resnet32"),
        pytest.param("wml", "vgg16", marks=pytest.mark.slow),
        pytest.param("wml", "densenet40_12", marks=pytest.mark.slow),
        ("wml", "cnn_digits"),
    ],
)
def test_branch_members_export_as_plain_architectures(method, name):
    base = {"name": name, "kwargs": {"num_classes": 10}}
    torch.manual_seed(0)
    args = {"hypergrad": "first_order"} if method == "wml" else {}
    group = build_method(
        method, args, lambda **kw: create(name, num_classes=10, **kw), 3, "independent"
    )
    # One SGD step so shared and per-branch weights and BN statistics all move.
    x = _inputs(name)
    opt = torch.optim.SGD(group.parameters(), lr=0.1)
    ctx = StepContext(0, 0, 0, 10, np.random.default_rng(0), lr=0.1)
    loss, _ = group.compute_loss([x], torch.tensor([0, 1, 2, 3]), ctx)
    opt.zero_grad()
    loss.backward()
    opt.step()
    group.eval()
    with torch.no_grad():
        _, logits = member_outputs(list(group.nets.values()), [x], shared_trunk=True)
    for (member, state), z in zip(group.checkpoint_states().items(), logits):
        arch = group.member_arch(member, base)
        plain = create(arch["name"], **arch["kwargs"]).eval()
        plain.load_state_dict(state, strict=True)
        with torch.no_grad():
            assert torch.allclose(plain(x), z, atol=1e-5, rtol=1e-5), member
    # Shared trunk tensors are one parameter each for the optimiser.
    first = group.nets["peer_0"]
    trunk = [p for path in first.trunk_modules for p in first.get_submodule(path).parameters()]
    own = [p for n, p in group.named_parameters() if not n.startswith("nets.")]  # Q/K
    members = sum(len(list(n.parameters())) for n in group.nets.values())
    expected = members - (len(group.nets) - 1) * len(trunk) + len(own)
    assert len(trunk) > 0 and len(list(group.parameters())) == expected


def _dry_run(preset, out, *extra):
    return main(
        [
            "train",
            "--preset",
            preset,
            "--dry-run",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            *extra,
        ]
    )


# The other methods' digits/mnist1d presets are dry-run in test_trainer and test_cli.
SMALL = ["digits-okddip", "digits-wml", "mnist1d-okddip", "mnist1d-wml"]
CIFAR_PRESETS = sorted(p.name for p in list_presets() if p.name.startswith("cifar"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", SMALL)
def test_every_small_preset_dry_runs(preset, tmp_path):
    assert _dry_run(preset, tmp_path / "run", "data.train_subset=96", "batch_size=32") == 0
    info = RunDir(tmp_path / "run").read_info()
    assert info["status"] == "complete" and info["method"]["loss_terms"]
    logged = RunDir(tmp_path / "run").read_metrics()[-1]
    for term in info["method"]["loss_terms"]:  # every recorded term is logged (member 0's)
        assert f"train/{term.replace('_i', '_0')}" in logged, term


def _write_cifar_files(root, n=4):
    """Tiny CIFAR-10 and CIFAR-100 in CIFAR's pickle format: 'data' uint8 (N, 3072) + labels."""
    rng = np.random.default_rng(0)
    layout = {
        "cifar-10-batches-py": (
            "labels",
            10,
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
        ),
        "cifar-100-python": ("fine_labels", 100, ["train", "test"]),
    }
    for folder, (key, classes, files) in layout.items():
        (root / folder).mkdir()
        for name in files:
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            with open(root / folder / name, "wb") as f:
                pickle.dump({"data": data, key: rng.integers(0, classes, n).tolist()}, f)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    _write_cifar_files(root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("preset", CIFAR_PRESETS)
def test_every_cifar_preset_dry_runs_on_cifar_format_files(
    preset, cifar_root, tmp_path, monkeypatch
):
    if "resnet32" not in preset:
        # Big models: skip writing their checkpoints (hundreds of MB), which the resnet32 presets test.
        monkeypatch.setattr(RunDir, "save_checkpoint", lambda self, epoch, payload, sidecar: None)
    extra = [f"data.root={cifar_root}", "data.train_subset=2", "batch_size=2"]
    assert _dry_run(preset, tmp_path / "run", *extra) == 0
    info = RunDir(tmp_path / "run").read_info()
    assert info["data"]["name"] in ("cifar10", "cifar100") and info["epochs_done"] <= 1
    record = RunDir(tmp_path / "run").read_metrics()[-1]
    assert record["epoch"] == 1 and np.isfinite(record["train/loss"])
