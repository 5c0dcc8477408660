"""Small networks for the embedded datasets: an MLP, a CNN for 8x8 digits, a 1D CNN for mnist1d.

They are small enough to train in a minute on two CPU cores and to take dense Hessians of in tests,
yet have the parts that make loss-landscape analysis tricky (BatchNorm, biases, conv filters).

The two CNNs also follow the branch protocol of ``okdph.models.branches``: their first two conv
blocks are the trunk, the last conv block the head, whose width ``head_width`` can be pruned.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from okdph.models.branches import scaled_width
from okdph.models.registry import register


def _conv_bn_relu(conv: nn.Module, channels: int, bn: bool, dims: int) -> list[nn.Module]:
    norm: nn.Module = nn.Identity()
    if bn:
        norm = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    return [conv, norm, nn.ReLU(inplace=True)]


def _run(body: nn.Sequential, start: int, stop: int | None, x: Tensor) -> Tensor:
    for module in list(body)[start:stop]:
        x = module(x)
    return x


# Index in ``body`` where the head starts: the trunk is the first two conv-BN-ReLU blocks.
_HEAD_START = 6


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs."""

    def __init__(
        self,
        num_classes: int = 10,
        input_dim: int = 64,
        hidden: tuple[int, ...] = (128, 128),
        bn: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, h)]
            if bn:
                layers += [nn.BatchNorm1d(h)]
            layers += [nn.ReLU(inplace=True)]
            width = h
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        self.feature_dim = width

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations, shape (batch, feature_dim)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _TrunkHeadCNN(nn.Module):
    """A conv ``body`` whose first ``_HEAD_START`` modules are the trunk and the rest the head,
    followed by a linear ``classifier`` (the branch protocol of ``okdph.models.branches``)."""

    trunk_modules = tuple(f"body.{i}" for i in range(_HEAD_START))
    head_width: int
    body: nn.Sequential
    classifier: nn.Linear

    def _shaped(self, x: Tensor) -> Tensor:
        """The input in the layout the first conv expects."""
        raise NotImplementedError

    def trunk(self, x: Tensor) -> Tensor:
        """The first two conv blocks."""
        return _run(self.body, 0, _HEAD_START, self._shaped(x))

    def head_features(self, h: Tensor) -> Tensor:
        """The rest of the body on a trunk output: the penultimate features."""
        return _run(self.body, _HEAD_START, None, h)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features, shape (batch, feature_dim)."""
        return self.head_features(self.trunk(x))

    def head_width_kwargs(self, keep: float) -> dict[str, int]:
        """Keyword arguments that rebuild this network with the last conv pruned to ``keep``."""
        return {"head_width": scaled_width(self.head_width, keep)}

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class DigitsCNN(_TrunkHeadCNN):
    """Three-conv CNN with BatchNorm for 1x8x8 images (scikit-learn's digits); the head is
    max-pooling, the last conv block and global average pooling."""

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 16,
        in_channels: int = 1,
        bn: bool = True,
        head_width: int | None = None,
    ):
        super().__init__()
        w = width
        self.head_width = h = 2 * w if head_width is None else int(head_width)
        self.body = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(in_channels, w, 3, padding=1, bias=not bn), w, bn, 2),
            *_conv_bn_relu(nn.Conv2d(w, 2 * w, 3, padding=1, bias=not bn), 2 * w, bn, 2),
            nn.MaxPool2d(2),
            *_conv_bn_relu(nn.Conv2d(2 * w, h, 3, padding=1, bias=not bn), h, bn, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(h, num_classes)
        self.feature_dim = h

    def _shaped(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # flat 64-vectors from other pipelines
            side = math.isqrt(x.shape[1])
            x = x.view(x.shape[0], 1, side, side)
        return x


class Signal1dCNN(_TrunkHeadCNN):
    """1D CNN for mnist1d signals of length 40: three strided convs, then a linear classifier.

    The classifier sees the flattened feature map rather than a global average, because in mnist1d
    the position of a pattern carries class information.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 32,
        length: int = 40,
        bn: bool = True,
        head_width: int | None = None,
    ) -> None:
        super().__init__()
        w = width
        self.head_width = h = 2 * w if head_width is None else int(head_width)
        self.body = nn.Sequential(
            *_conv_bn_relu(nn.Conv1d(1, w, 5, padding=2, bias=not bn), w, bn, 1),
            *_conv_bn_relu(nn.Conv1d(w, 2 * w, 3, stride=2, padding=1, bias=not bn), 2 * w, bn, 1),
            *_conv_bn_relu(nn.Conv1d(2 * w, h, 3, stride=2, padding=1, bias=not bn), h, bn, 1),
            nn.Flatten(),
        )
        out_len = math.ceil(math.ceil(length / 2) / 2)
        self.feature_dim = h * out_len
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _shaped(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


@register("mlp")
def mlp(num_classes: int = 10, input_dim: int = 64, hidden=(128, 128), bn: bool = False) -> MLP:
    """MLP on flattened inputs; defaults fit 8x8 digits."""
    return MLP(num_classes, input_dim, tuple(hidden), bn)


@register("cnn_digits")
def cnn_digits(
    num_classes: int = 10, width: int = 16, bn: bool = True, head_width: int | None = None
) -> DigitsCNN:
    """Small CNN for 1x8x8 digits (about 15k parameters at width 16)."""
    return DigitsCNN(num_classes, width, bn=bn, head_width=head_width)


@register("cnn1d")
def cnn1d(
    num_classes: int = 10,
    width: int = 32,
    length: int = 40,
    bn: bool = True,
    head_width: int | None = None,
) -> Signal1dCNN:
    """1D CNN for mnist1d (length-40 signals)."""
    return Signal1dCNN(num_classes, width, length, bn, head_width)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalar parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["MLP", "DigitsCNN", "Signal1dCNN", "count_parameters"]
