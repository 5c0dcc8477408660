"""CIFAR ResNets as in the OKDPH reference code (stem of 16 channels, three stages 16/32/64).

Parameter names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0``, ``fc``), which the reference code also uses, so its state dicts load
unchanged. ``resnet110`` and ``wrn_20_8`` are the reference code's Bottleneck variants, not the
classic basic-block ResNet-110 / wide ResNet.
"""

from __future__ import annotations

from torch import Tensor, nn

from okdph.models.registry import register


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

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int],
        num_classes: int = 10,
        width_per_group: int = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.inplanes = 16
        self.width = width_per_group
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 16, layers[0])
        self.layer2 = self._make_layer(block, 32, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 64, layers[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = 64 * block.expansion
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

    def features(self, x: Tensor) -> Tensor:
        """Globally pooled output of the last stage, shape (batch, feature_dim)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.avgpool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@register("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-32: BasicBlock [5, 5, 5] (0.467M parameters for 10 classes)."""
    return CifarResNet(BasicBlock, (5, 5, 5), num_classes, in_channels=in_channels)


@register("resnet110")
def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """The reference code's ResNet-110: Bottleneck [12, 12, 12] (1.148M parameters for 10 classes)."""
    return CifarResNet(Bottleneck, (12, 12, 12), num_classes, in_channels=in_channels)


@register("wrn_20_8")
def wrn_20_8(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """The reference code's WRN-20-8: Bottleneck [2, 2, 2], 8x bottleneck width (6.85M parameters)."""
    return CifarResNet(
        Bottleneck, (2, 2, 2), num_classes, width_per_group=64 * 8, in_channels=in_channels
    )
