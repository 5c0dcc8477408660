"""CIFAR ResNets as in the OKDPH reference code (stem of 16 channels, three stages 16/32/64).

Parameter names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0``, ``fc``), which the reference code also uses, so its state dicts load
unchanged. ``resnet110`` and ``wrn_20_8`` are the reference code's Bottleneck variants, not the
classic basic-block ResNet-110 / wide ResNet.

Branch layout (ONE, OKDDip, WML): the stem, ``layer1`` and ``layer2`` form the shared trunk and each
branch owns ``layer3`` and ``fc``. ``widths`` sets the three stages' channels, so a member whose
``layer3`` was pruned is rebuilt with e.g. ``resnet32(widths=(16, 32, 48))``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from okdph.models.branches import scaled_width
from okdph.models.registry import register

DEFAULT_WIDTHS = (16, 32, 64)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample=None, width: int = 64
    ):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample=None, width: int = 64
    ):
        super().__init__()
        inner = int(planes * (width / 64.0))
        self.conv1 = conv1x1(inplanes, inner)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = conv3x3(inner, inner, stride)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = conv1x1(inner, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, three stages with strides 1/2/2, global pooling, ``fc``."""

    trunk_modules = ("conv1", "bn1", "layer1", "layer2")

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int],
        num_classes: int = 10,
        width_per_group: int = 64,
        in_channels: int = 3,
        widths: Sequence[int] = DEFAULT_WIDTHS,  # three stage widths (checked below)
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3:
            raise ValueError(f"widths must list three stage widths, got {widths}")
        self.widths = widths
        self.inplanes = widths[0]
        self.width = width_per_group
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = widths[2] * block.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, width=self.width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def trunk(self, x: Tensor) -> Tensor:
        """Stem, ``layer1`` and ``layer2`` (shared by the branches of a branch model)."""
        return self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))

    def head_features(self, h: Tensor) -> Tensor:
        """``layer3`` and global pooling of a trunk output, shape (batch, feature_dim)."""
        return self.avgpool(self.layer3(h)).flatten(1)

    def features(self, x: Tensor) -> Tensor:
        """Globally pooled output of the last stage, shape (batch, feature_dim)."""
        return self.head_features(self.trunk(x))

    def head_width_kwargs(self, keep: float) -> dict[str, list[int]]:
        """Keyword arguments that rebuild this network with ``layer3`` pruned to ``keep``."""
        return {"widths": [*self.widths[:2], scaled_width(self.widths[2], keep)]}

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@register("resnet32")
def resnet32(
    num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS
) -> CifarResNet:
    """CIFAR ResNet-32: BasicBlock [5, 5, 5] (0.467M parameters for 10 classes)."""
    return CifarResNet(
        BasicBlock, (5, 5, 5), num_classes, in_channels=in_channels, widths=tuple(widths)
    )


# Shallower basic-block ResNets of the same family (He et al. 2016's 6n+2 rule), for CPU budgets:
# one input channel and ``widths=(8, 16, 32)`` make them Fashion-MNIST's small students.
@register("resnet8")
def resnet8(
    num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS
) -> CifarResNet:
    """CIFAR ResNet-8: BasicBlock [1, 1, 1] (78k parameters at widths 16/32/64, 20k at 8/16/32)."""
    return CifarResNet(
        BasicBlock, (1, 1, 1), num_classes, in_channels=in_channels, widths=tuple(widths)
    )


@register("resnet14")
def resnet14(
    num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS
) -> CifarResNet:
    """CIFAR ResNet-14: BasicBlock [2, 2, 2] (0.175M parameters at widths 16/32/64)."""
    return CifarResNet(
        BasicBlock, (2, 2, 2), num_classes, in_channels=in_channels, widths=tuple(widths)
    )


@register("resnet20")
def resnet20(
    num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS
) -> CifarResNet:
    """CIFAR ResNet-20: BasicBlock [3, 3, 3] (0.272M parameters at widths 16/32/64)."""
    return CifarResNet(
        BasicBlock, (3, 3, 3), num_classes, in_channels=in_channels, widths=tuple(widths)
    )


@register("resnet110")
def resnet110(
    num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS
) -> CifarResNet:
    """The reference code's ResNet-110: Bottleneck [12, 12, 12] (1.148M parameters for 10 classes)."""
    return CifarResNet(
        Bottleneck, (12, 12, 12), num_classes, in_channels=in_channels, widths=tuple(widths)
    )


@register("wrn_20_8")
def wrn_20_8(
    num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS
) -> CifarResNet:
    """The reference code's WRN-20-8: Bottleneck [2, 2, 2], 8x bottleneck width (6.85M parameters)."""
    return CifarResNet(
        Bottleneck,
        (2, 2, 2),
        num_classes,
        width_per_group=64 * 8,
        in_channels=in_channels,
        widths=tuple(widths),
    )
