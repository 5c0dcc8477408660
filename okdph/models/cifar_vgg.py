"""CIFAR VGG-16 with BatchNorm, as in the OKDPH/OKDDip reference code.

Parameter names follow the reference definition so its state dicts load unchanged: a two-conv stem
``conv1``/``bn1``/``conv2``/``bn2`` (then max-pooling), stages ``layer1`` .. ``layer4`` as
``Sequential(conv, bn, relu) * n + maxpool`` (convolutions with bias), and ``classifier`` =
``Sequential(Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear)`` (``classifier.0/.3/.6``).

``features(x)`` is the flattened ``layer4`` output (512 values for 32x32 inputs), which is what the
reference OKDDip attends over; ``classifier`` is therefore the whole three-layer MLP, and
``classifier(features(x))`` gives the logits.

Branch layout: stem and ``layer1``..``layer3`` are the shared trunk; each branch owns ``layer4`` and
the classifier (as the reference OKDDip VGG). ``widths`` and ``hidden`` make pruned heads rebuildable.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from okdph.models.branches import scaled_width
from okdph.models.registry import register

DEFAULT_WIDTHS = (64, 128, 256, 512, 512)
STAGE_DEPTHS = (2, 3, 3, 3)  # convolutions in layer1..layer4 for VGG-16


def _stage(in_channels: int, out_channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers, nn.MaxPool2d(2, 2))


class CifarVGG(nn.Module):
    """VGG-16 for 32x32 inputs: stem of two convs, four stages, five max-pools, MLP classifier."""

    trunk_modules = ("conv1", "bn1", "conv2", "bn2", "layer1", "layer2", "layer3")

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        hidden: int = 512,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        w = tuple(int(v) for v in widths)
        if len(w) != 5:
            raise ValueError(f"widths must list the stem and four stage widths, got {w}")
        self.widths, self.hidden = w, int(hidden)
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, padding=1)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.conv2 = nn.Conv2d(w[0], w[0], 3, padding=1)
        self.bn2 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2, 2)
        self.layer1 = _stage(w[0], w[1], STAGE_DEPTHS[0])
        self.layer2 = _stage(w[1], w[2], STAGE_DEPTHS[1])
        self.layer3 = _stage(w[2], w[3], STAGE_DEPTHS[2])
        self.layer4 = _stage(w[3], w[4], STAGE_DEPTHS[3])
        self.feature_dim = w[4]
        self.classifier = nn.Sequential(
            nn.Linear(w[4], self.hidden),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(self.hidden, self.hidden),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(self.hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                assert m.bias is not None  # every convolution here has a bias
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def trunk(self, x: Tensor) -> Tensor:
        """Stem and ``layer1``..``layer3`` (shared by the branches of a branch model)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(self.relu(self.bn2(self.conv2(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def head_features(self, h: Tensor) -> Tensor:
        """``layer4`` output of a trunk output, flattened: shape (batch, feature_dim)."""
        return self.layer4(h).flatten(1)

    def features(self, x: Tensor) -> Tensor:
        """Flattened ``layer4`` output, shape (batch, feature_dim) for 32x32 inputs."""
        return self.head_features(self.trunk(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def head_width_kwargs(self, keep: float) -> dict[str, list[int] | int]:
        """Keyword arguments that rebuild this network with ``layer4`` and the classifier's hidden
        units pruned to the fraction ``keep``."""
        return {
            "widths": [*self.widths[:4], scaled_width(self.widths[4], keep)],
            "hidden": scaled_width(self.hidden, keep),
        }


@register("vgg16")
def vgg16(
    num_classes: int = 10,
    in_channels: int = 3,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    hidden: int = 512,
    dropout: float = 0.0,
) -> CifarVGG:
    """CIFAR VGG-16 with BatchNorm (15.25M parameters for 10 classes, 15.30M for 100)."""
    return CifarVGG(num_classes, widths, hidden, dropout, in_channels)
