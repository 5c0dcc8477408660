"""CIFAR DenseNet-BC (depth 40, growth 12) as in the OKDPH reference code.

Parameter names follow the reference (and torchvision) definition so its state dicts load
unchanged: ``features`` is a Sequential of ``conv0`` (a 3x3 stem), ``denseblock1``,
``transition1``, ``denseblock2``, ``transition2``, ``denseblock3`` and ``norm_final``, with layers
``features.denseblockN.denselayerM.{norm1,conv1,norm2,conv2}`` and transitions
``features.transitionN.{norm,conv}``; the linear layer is ``classifier``.

``features(x)`` returns the pooled penultimate features (the ``features`` Sequential ends with the
final ReLU and global average pooling, which have no parameters, so names are unchanged).

Branch layout: everything up to ``transition2`` is the shared trunk; each branch owns
``denseblock3``, ``norm_final`` and ``classifier``. ``growth_rates`` (one per block) makes a
member with a pruned last block rebuildable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from okdph.models.branches import scaled_width
from okdph.models.registry import register


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck of ``bn_size * growth`` channels), BN-ReLU-3x3 conv."""

    def __init__(self, in_channels: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.Module):
    """``denselayer1..n``; each layer sees the concatenation of the input and all earlier outputs."""

    def __init__(self, num_layers: int, in_channels: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(
                f"denselayer{i + 1}", DenseLayer(in_channels + i * growth, growth, bn_size)
            )

    def forward(self, x: Tensor) -> Tensor:
        outputs = [x]
        for layer in self.children():
            outputs.append(layer(torch.cat(outputs, 1)))
        return torch.cat(outputs, 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (compression) and 2x2 average pooling between blocks."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_channels))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(2, 2))


class PooledFeatures(nn.Sequential):
    """The ``features`` Sequential, followed by ReLU and global average pooling."""

    def forward(self, x: Tensor) -> Tensor:
        for module in self:
            x = module(x)
        return F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1)


class CifarDenseNet(nn.Module):
    """DenseNet-BC for 32x32 inputs: 3x3 stem, dense blocks with compressing transitions."""

    def __init__(
        self,
        num_classes: int = 10,
        block_layers: Sequence[int] = (6, 6, 6),
        growth_rates: Sequence[int] = (12, 12, 12),
        init_features: int = 24,
        bn_size: int = 4,
        compression: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.growth_rates = tuple(int(g) for g in growth_rates)
        if len(self.growth_rates) != len(block_layers):
            raise ValueError(
                f"growth_rates {self.growth_rates} must give one rate per block {block_layers}"
            )
        self.features = PooledFeatures()
        self.features.add_module(
            "conv0", nn.Conv2d(in_channels, init_features, 3, padding=1, bias=False)
        )
        channels = init_features
        for i, (layers, growth) in enumerate(zip(block_layers, self.growth_rates)):
            self.features.add_module(
                f"denseblock{i + 1}", DenseBlock(layers, channels, growth, bn_size)
            )
            channels += layers * growth
            if i < len(block_layers) - 1:
                out = int(channels * compression)
                self.features.add_module(f"transition{i + 1}", Transition(channels, out))
                channels = out
        self.features.add_module("norm_final", nn.BatchNorm2d(channels))
        self.feature_dim = channels
        self.classifier = nn.Linear(channels, num_classes)
        names = [name for name, _ in self.features.named_children()]
        # The trunk ends with the last transition: the last dense block starts every branch.
        self._split = names.index(f"denseblock{len(block_layers)}")
        self.trunk_modules = tuple(f"features.{n}" for n in names[: self._split])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def trunk(self, x: Tensor) -> Tensor:
        """Stem and all blocks and transitions before the last block."""
        for module in list(self.features)[: self._split]:
            x = module(x)
        return x

    def head_features(self, h: Tensor) -> Tensor:
        """Last block, final BN, ReLU and global pooling of a trunk output: (batch, feature_dim)."""
        for module in list(self.features)[self._split :]:
            h = module(h)
        return F.adaptive_avg_pool2d(F.relu(h), 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def head_width_kwargs(self, keep: float) -> dict[str, list[int]]:
        """Keyword arguments that rebuild this network with the last block's growth rate (and so
        its bottleneck width) pruned to the fraction ``keep``."""
        return {
            "growth_rates": [*self.growth_rates[:-1], scaled_width(self.growth_rates[-1], keep)]
        }


@register("densenet40_12")
def densenet40_12(
    num_classes: int = 10, in_channels: int = 3, growth_rates: Sequence[int] = (12, 12, 12)
) -> CifarDenseNet:
    """DenseNet-BC-40 with growth 12: blocks [6, 6, 6], bottleneck 4x, compression 0.5, 24 stem
    channels (0.176M parameters for 10 classes, 0.188M for 100)."""
    return CifarDenseNet(num_classes, (6, 6, 6), growth_rates, in_channels=in_channels)
