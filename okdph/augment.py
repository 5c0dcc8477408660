"""Per-sample augmentations applied as batched tensor ops on the training device.

A pipeline is written as ops joined by ``+``, each optionally with a strength after a colon:
``"shift"``, ``"shift:2+noise:0.1"``, ``"crop+flip+cutout:16"``. Every op draws independent random
numbers for every sample from an explicit ``torch.Generator``, so runs are repeatable and a resumed
epoch sees exactly the same views. Ops work on unit-range inputs (images in [0, 1]) before
normalisation.

OKDPH's students owe their diversity to seeing different views of each batch (the reference code
gives each network its own torchvision pipeline), hence one pipeline per network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from okdph.autoaugment import auto_augment, rand_augment

Op = Callable[[Tensor, torch.Generator], Tensor]
# name -> (factory(strength, kind) -> op, kinds it supports, default strength description)
_OPS: dict[str, tuple[Callable[[float | None, str], Op], tuple[str, ...], str]] = {}


class AugmentError(ValueError):
    """An unknown op, or an op that does not apply to this kind of data."""


def register_op(name: str, kinds: tuple[str, ...], doc: str) -> Callable:
    def decorate(factory: Callable[[float | None, str], Op]) -> Callable[[float | None, str], Op]:
        _OPS[name] = (factory, kinds, doc)
        return factory

    return decorate


def list_ops() -> dict[str, str]:
    """Available op names with a one-line description of each (and its strength parameter)."""
    return {name: doc for name, (_, _, doc) in sorted(_OPS.items())}


def _uniform(n: int, low: float, high: float, x: Tensor, gen: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, device=x.device, generator=gen, dtype=x.dtype)


def _translate(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Shift each sample by a random integer offset in [-max_shift, max_shift] along every spatial
    axis, filling with zeros (for images this equals RandomCrop(size, padding=max_shift))."""
    if max_shift <= 0:
        return x
    spatial = x.shape[2:] if x.dim() > 2 else x.shape[1:]
    n, p = x.shape[0], max_shift
    padded = F.pad(x, [p, p] * len(spatial))
    index: list[Tensor] = [torch.arange(n, device=x.device).view(n, *([1] * (x.dim() - 1)))]
    if x.dim() > 2:
        index.append(torch.arange(x.shape[1], device=x.device).view(1, -1, *([1] * len(spatial))))
    for axis, size in enumerate(spatial):
        offset = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=gen)
        pos = torch.arange(size, device=x.device).view(1, -1) + offset.view(-1, 1)
        shape = [n] + [1] * (x.dim() - 1)
        shape[x.dim() - len(spatial) + axis] = size
        index.append(pos.view(shape))
    return padded[tuple(index)]


@register_op("none", ("image", "signal"), "identity")
def _none(strength: float | None, kind: str) -> Op:
    return lambda x, gen: x


@register_op(
    "shift",
    ("image", "signal"),
    "random translation by up to N px/steps, zero fill "
    "(default: size/8 for images, 4 steps for signals); for images = RandomCrop with padding",
)
def _shift(strength: float | None, kind: str) -> Op:
    def op(x: Tensor, gen: torch.Generator) -> Tensor:
        size = x.shape[-1]
        default = max(1, size // 8) if kind == "image" else 4
        return _translate(x, int(strength if strength is not None else default), gen)

    return op


_OPS["crop"] = (
    _OPS["shift"][0],
    ("image",),
    "alias of shift for images (RandomCrop, padding size/8)",
)


@register_op("flip", ("image",), "horizontal flip with probability 0.5 (or the given probability)")
def _flip(strength: float | None, kind: str) -> Op:
    prob = 0.5 if strength is None else strength

    def op(x: Tensor, gen: torch.Generator) -> Tensor:
        mask = torch.rand(x.shape[0], device=x.device, generator=gen) < prob
        return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)

    return op


def _affine(x: Tensor, angle: Tensor, scale: Tensor, mode: str = "bilinear") -> Tensor:
    """Rotate by ``angle`` (radians) and zoom by ``scale`` about the centre, per sample, zero fill."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


@register_op("rot", ("image",), "random rotation, uniform in +-N degrees (default 15)")
def _rot(strength: float | None, kind: str) -> Op:
    degrees = 15.0 if strength is None else strength

    def op(x: Tensor, gen: torch.Generator) -> Tensor:
        angle = _uniform(x.shape[0], -degrees, degrees, x, gen) * (math.pi / 180)
        # Nearest-pixel sampling, as torchvision's RandomRotation (the reference pipelines).
        return _affine(x, angle, torch.ones_like(angle), mode="nearest")

    return op


@register_op(
    "scale",
    ("image", "signal"),
    "images: random zoom in [1-s, 1+s]; signals: amplitude "
    "scaling in [1-s, 1+s] (default s=0.1 for images, 0.2 for signals)",
)
def _scale(strength: float | None, kind: str) -> Op:
    s = (0.1 if kind == "image" else 0.2) if strength is None else strength

    def op(x: Tensor, gen: torch.Generator) -> Tensor:
        factor = _uniform(x.shape[0], 1 - s, 1 + s, x, gen)
        if kind == "signal":
            return x * factor.view(-1, *([1] * (x.dim() - 1)))
        return _affine(x, torch.zeros_like(factor), factor)

    return op


@register_op(
    "noise",
    ("image", "signal"),
    "additive Gaussian noise with std N (default 0.05 for images in [0, 1], 0.1 for signals)",
)
def _noise(strength: float | None, kind: str) -> Op:
    std = (0.05 if kind == "image" else 0.1) if strength is None else strength

    def op(x: Tensor, gen: torch.Generator) -> Tensor:
        return x + std * torch.randn(x.shape, device=x.device, generator=gen, dtype=x.dtype)

    return op


@register_op(
    "cutout",
    ("image", "signal"),
    "zero one square (images) or window (signals) of side N "
    "at a random centre, clipped at the border (default: half the size, as Cutout 16 on CIFAR)",
)
def _cutout(strength: float | None, kind: str) -> Op:
    def op(x: Tensor, gen: torch.Generator) -> Tensor:
        spatial = x.shape[2:] if kind == "image" else x.shape[-1:]
        side = int(strength) if strength is not None else max(1, spatial[-1] // 2)
        n = x.shape[0]
        # The hole is the product of one window per spatial axis.
        hole = torch.ones(n, *([1] * len(spatial)), device=x.device, dtype=torch.bool)
        for axis, size in enumerate(spatial):
            start = torch.randint(0, size, (n, 1), device=x.device, generator=gen) - side // 2
            pos = torch.arange(size, device=x.device).view(1, -1)
            shape = [n] + [1] * len(spatial)
            shape[1 + axis] = size
            hole = hole & ((pos >= start) & (pos < start + side)).view(shape)
        keep = (~hole).to(x.dtype)
        return x * (keep.unsqueeze(1) if kind == "image" else keep)

    return op


@register_op(
    "randaugment",
    ("image",),
    "RandAugment as torchvision's defaults: 2 ops per sample from its 14, at magnitude "
    "bin N of 0..30 (default 9)",
)
def _randaugment(strength: float | None, kind: str) -> Op:
    magnitude = 9 if strength is None else int(strength)
    if not 0 <= magnitude <= 30:
        raise AugmentError(f"randaugment magnitude must lie in 0..30, got {strength}")
    return lambda x, gen: rand_augment(x, gen, num_ops=2, magnitude=magnitude)


@register_op("autoaugment", ("image",), "AutoAugment with the CIFAR-10 policy (torchvision's)")
def _autoaugment(strength: float | None, kind: str) -> Op:
    return lambda x, gen: auto_augment(x, gen, "cifar10")


@register_op(
    "autoaugment_imagenet",
    ("image",),
    "AutoAugment with the ImageNet policy (torchvision's default, "
    "which the OKDPH reference's auto_aug pipeline uses even on CIFAR)",
)
def _autoaugment_imagenet(strength: float | None, kind: str) -> Op:
    return lambda x, gen: auto_augment(x, gen, "imagenet")


@dataclass(frozen=True)
class Pipeline:
    """A parsed augmentation pipeline: ``spec`` as written and the ops it applies in order."""

    spec: str
    ops: tuple[Op, ...]

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        for op in self.ops:
            x = op(x, gen)
        return x


def build_pipeline(spec: str, kind: str) -> Pipeline:
    """Parse ``"op[:strength]+op..."`` for data of ``kind`` (``"image"`` or ``"signal"``)."""
    ops = []
    for part in spec.split("+"):
        name, _, raw = part.strip().partition(":")
        if name not in _OPS:
            raise AugmentError(
                f"unknown augmentation {name!r} in {spec!r}; available: {', '.join(sorted(_OPS))}"
            )
        factory, kinds, _ = _OPS[name]
        if kind not in kinds:
            raise AugmentError(f"augmentation {name!r} does not apply to {kind} data")
        try:
            strength = float(raw) if raw else None
        except ValueError:
            raise AugmentError(
                f"augmentation strength {raw!r} in {spec!r} is not a number"
            ) from None
        ops.append(factory(strength, kind))
    return Pipeline(spec, tuple(ops))
