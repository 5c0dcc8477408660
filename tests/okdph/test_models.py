import pytest
import torch

from okdph.models import UnknownModelError, create, list_models
from okdph.models.small import count_parameters

INPUTS = {
    "mlp": (1, 8, 8),
    "cnn_digits": (1, 8, 8),
    "cnn1d": (40,),
    "resnet32": (3, 32, 32),
    "resnet110": (3, 32, 32),
    "wrn_20_8": (3, 32, 32),
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_every_model_builds_with_defaults_and_num_classes(name):
    torch.manual_seed(0)
    x = torch.randn(2, *INPUTS[name])
    for classes in (10, 7):
        model = create(name, num_classes=classes).eval()
        with torch.no_grad():
            out = model(x)
            feats = model.features(x)
        assert out.shape == (2, classes)
        assert feats.shape == (2, model.feature_dim)
        assert torch.allclose(model.classifier(feats), out, atol=1e-6)


def test_registry_lists_and_rejects_unknown_names():
    assert {"mlp", "cnn_digits", "cnn1d", "resnet32"} <= set(list_models())
    assert list_models("resnet*") == sorted(n for n in list_models() if n.startswith("resnet"))
    with pytest.raises(UnknownModelError, match="unknown model 'resnet33'.*available models"):
        create("resnet33")
    with pytest.raises(ValueError, match="does not accept"):
        create("mlp", depth=3)


@pytest.mark.parametrize(
    "name, classes, expected",
    # The reference code's counts (methods.md 1.6): 0.467M / 0.473M, 1.148M / 1.171M, 6.85M / 6.87M.
    [
        ("resnet32", 10, 466_906),
        ("resnet32", 100, 472_756),
        ("resnet110", 10, 1_147_738),
        ("resnet110", 100, 1_170_868),
        ("wrn_20_8", 10, 6_848_090),
    ],
)
def test_cifar_resnet_parameter_counts(name, classes, expected):
    assert count_parameters(create(name, num_classes=classes)) == expected


def test_resnet32_uses_torchvision_parameter_names():
    keys = list(create("resnet32").state_dict())
    for expected in [
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.4.bn2.num_batches_tracked",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "layer3.4.conv2.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert expected in keys
    # BasicBlock stages: 5 blocks each, a projection shortcut only where the shape changes.
    assert not any(k.startswith("layer1.0.downsample") for k in keys)
    assert sum(k.endswith("conv1.weight") for k in keys) == 1 + 15


def test_reference_style_state_dict_loads_unchanged():
    # A state dict saved by a model with the reference names loads strictly into a fresh model.
    src = create("resnet32", num_classes=100)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    dst = create("resnet32", num_classes=100)
    dst.load_state_dict(state, strict=True)
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in state.items())
