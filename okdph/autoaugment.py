"""RandAugment and AutoAugment as batched per-sample tensor ops on unit-range image batches.

The op set, magnitude ranges and policies are torchvision's (``transforms.RandAugment`` with its
defaults, ``transforms.AutoAugment`` with the CIFAR-10 or ImageNet policy), which is what the OKDPH
reference pipelines call; the arithmetic is torchvision's float-image semantics
(``transforms.v2.functional``): colours clamp to [0, 1], geometric ops sample the nearest pixel and
fill with zeros, Solarize thresholds are fractions of the range, Equalize works on the 8-bit values.

Every sample draws its own ops, signs and probabilities from the given generator. Samples are then
grouped by op so each op runs once per batch on its group, on whatever device the batch is on; all
geometric ops of a round share one ``grid_sample`` call with per-sample affine matrices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

OP_NAMES = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
OP_INDEX = {name: i for i, name in enumerate(OP_NAMES)}
RANDAUGMENT_OPS = OP_NAMES[:14]  # torchvision's RandAugment has no Invert
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_SIGNED = (*_GEOMETRIC, "Brightness", "Color", "Contrast", "Sharpness")

# AutoAugment policies (Cubuk et al. 2019) as torchvision lists them: sub-policies of two
# (op, probability, magnitude bin of 10) steps.
CIFAR10_POLICY = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
POLICIES = {"cifar10": CIFAR10_POLICY, "imagenet": IMAGENET_POLICY}


def magnitude_table(num_bins: int, height: int, width: int) -> Tensor:
    """Magnitude of every op (rows, in ``OP_NAMES`` order) at every bin (columns), unsigned."""
    table = torch.zeros(len(OP_NAMES), num_bins)
    # Computed in float32 as torchvision does, so bins land on the same values.
    spaced = {
        "ShearX": (0.0, 0.3),
        "ShearY": (0.0, 0.3),
        "TranslateX": (0.0, 150.0 / 331.0 * width),
        "TranslateY": (0.0, 150.0 / 331.0 * height),
        "Rotate": (0.0, 30.0),
        "Brightness": (0.0, 0.9),
        "Color": (0.0, 0.9),
        "Contrast": (0.0, 0.9),
        "Sharpness": (0.0, 0.9),
        "Solarize": (1.0, 0.0),
    }
    for name, (low, high) in spaced.items():
        table[OP_INDEX[name]] = torch.linspace(low, high, num_bins)
    bits = 8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round()
    table[OP_INDEX["Posterize"]] = bits
    return table


def _signed_mask(device: torch.device) -> Tensor:
    return torch.tensor([name in _SIGNED for name in OP_NAMES], device=device)


# ---- geometric ops: one grid_sample per call ------------------------------------------------------
def _geometric(x: Tensor, ops: Tensor, mags: Tensor) -> Tensor:
    """Shear, translate and rotate each sample about torchvision's centres (shear about the
    top-left corner, the rest about the image centre), nearest pixel, zero fill."""
    n, _, height, width = x.shape
    one, zero = torch.ones_like(mags), torch.zeros_like(mags)
    # Inverse affine map, output pixel -> input pixel, in coordinates relative to the centre.
    m = [one.clone(), zero.clone(), zero.clone(), zero.clone(), one.clone(), zero.clone()]
    is_op = {name: ops == OP_INDEX[name] for name in _GEOMETRIC}
    m[1] = torch.where(is_op["ShearX"], mags, m[1])
    m[2] = torch.where(is_op["ShearX"], mags * (height / 2), m[2])
    m[3] = torch.where(is_op["ShearY"], mags, m[3])
    m[5] = torch.where(is_op["ShearY"], mags * (width / 2), m[5])
    m[2] = torch.where(is_op["TranslateX"], -mags.trunc(), m[2])
    m[5] = torch.where(is_op["TranslateY"], -mags.trunc(), m[5])
    angle = torch.where(is_op["Rotate"], mags, zero) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotate = is_op["Rotate"]
    m[0] = torch.where(rotate, cos, m[0])
    m[1] = torch.where(rotate, -sin, m[1])
    m[3] = torch.where(rotate, sin, m[3])
    m[4] = torch.where(rotate, cos, m[4])
    # affine_grid works in [-1, 1] coordinates (align_corners=False): rescale the pixel map.
    theta = torch.stack(
        [
            torch.stack([m[0], m[1] * (height / width), m[2] * (2 / width)], 1),
            torch.stack([m[3] * (width / height), m[4], m[5] * (2 / height)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [n, x.shape[1], height, width], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


# ---- colour ops: per-sample magnitude m of shape (n,) --------------------------------------------
def _per_sample(m: Tensor) -> Tensor:
    return m.view(-1, 1, 1, 1)


def _grayscale(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    return (x * ratio + other * (1.0 - ratio)).clamp_(0.0, 1.0)


def _brightness(x: Tensor, m: Tensor) -> Tensor:
    return (x * _per_sample(1.0 + m)).clamp_(0.0, 1.0)


def _color(x: Tensor, m: Tensor) -> Tensor:
    return _blend(x, _grayscale(x), _per_sample(1.0 + m))


def _contrast(x: Tensor, m: Tensor) -> Tensor:
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, _per_sample(1.0 + m))


def _sharpness(x: Tensor, m: Tensor) -> Tensor:
    channels, height, width = x.shape[1:]
    if height <= 2 or width <= 2:
        return x
    kernel = torch.full((3, 3), 1.0 / 13.0, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0 / 13.0
    blurred = F.conv2d(x, kernel.expand(channels, 1, 3, 3), groups=channels)
    out = x.clone()
    inner = out[..., 1:-1, 1:-1]  # the border keeps its pixels, as in torchvision
    inner.add_((blurred - inner) * _per_sample(-m))
    return out.clamp_(0.0, 1.0)


def _posterize(x: Tensor, m: Tensor) -> Tensor:
    levels = _per_sample(torch.pow(2.0, m.trunc()))
    return torch.minimum((x * levels).floor_(), levels - 1) / levels


def _solarize(x: Tensor, m: Tensor) -> Tensor:
    return torch.where(x >= _per_sample(m), 1.0 - x, x)


def _autocontrast(x: Tensor, m: Tensor) -> Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    flat = high == low
    scale = torch.where(flat, torch.ones_like(high), high - low)
    low = torch.where(flat, torch.zeros_like(low), low)
    return ((x - low) / scale).clamp_(0.0, 1.0)


def _equalize(x: Tensor, m: Tensor) -> Tensor:
    """Histogram equalisation of the 8-bit values of every channel (PIL's lookup table)."""
    n, c, height, width = x.shape
    values = (x * (256.0 - 1e-3)).to(torch.long).flatten(2)  # torchvision's float -> uint8
    hist = torch.zeros(n, c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(2, values, torch.ones_like(values))
    cum = hist.cumsum(2)
    # PIL: step = (pixels - count of the largest value present) // 255; lut[k] = (cum[k-1] +
    # step // 2) // step; channels with step 0 stay unchanged.
    last = hist.gather(2, cum.argmax(2, keepdim=True))
    step = (height * width - last) // 255
    lut = ((cum[..., :-1] + step // 2) // step.clamp(min=1)).clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], 2)
    values = torch.where(step > 0, lut.gather(2, values), values)
    return values.view(n, c, height, width).to(x.dtype).mul_(1.0 / 255.0)


def _invert(x: Tensor, m: Tensor) -> Tensor:
    return 1.0 - x


_COLOUR = {
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": _invert,
}


def apply_ops(x: Tensor, ops: Tensor, mags: Tensor) -> Tensor:
    """Apply op ``OP_NAMES[ops[i]]`` with signed magnitude ``mags[i]`` to sample i of ``x``.

    Args:
        x: images (batch, channels, height, width) in [0, 1].
        ops: op index per sample (int64, same device).
        mags: magnitude per sample in the op's units (shear factor, pixels, degrees, enhancement
            delta, bits, threshold), sign included.
    """
    counts = torch.bincount(ops, minlength=len(OP_NAMES)).tolist()
    out = x.clone()
    geometric = [OP_INDEX[name] for name in _GEOMETRIC]
    if any(counts[i] for i in geometric):
        idx = torch.isin(ops, torch.tensor(geometric, device=ops.device)).nonzero().squeeze(1)
        out[idx] = _geometric(x[idx], ops[idx], mags[idx])
    for name, kernel in _COLOUR.items():
        if counts[OP_INDEX[name]]:
            idx = (ops == OP_INDEX[name]).nonzero().squeeze(1)
            out[idx] = kernel(x[idx], mags[idx])
    return out


def draw_rand_augment(
    n: int,
    height: int,
    width: int,
    gen: torch.Generator,
    num_ops: int = 2,
    magnitude: int = 9,
    num_bins: int = 31,
) -> tuple[Tensor, Tensor]:
    """RandAugment's random choices: op indices and signed magnitudes, both (n, num_ops).

    Each sample draws every round's op uniformly from torchvision's 14 and, for signed ops, a sign
    with probability 1/2, at the fixed ``magnitude`` bin (torchvision defaults: 2 ops, 9 of 31).
    """
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"RandAugment magnitude must lie in [0, {num_bins - 1}], got {magnitude}")
    device = gen.device
    table = magnitude_table(num_bins, height, width)[:, magnitude].to(device)
    ops = torch.randint(0, len(RANDAUGMENT_OPS), (n, num_ops), generator=gen, device=device)
    flip = torch.randint(0, 2, (n, num_ops), generator=gen, device=device).bool()
    flip &= _signed_mask(device)[ops]
    return ops, torch.where(flip, -table[ops], table[ops])


def _policy_tensors(policy: tuple, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    ops = [[OP_INDEX[name] for name, _, _ in sub] for sub in policy]
    probs = [[p for _, p, _ in sub] for sub in policy]
    bins = [[b or 0 for _, _, b in sub] for sub in policy]
    return (
        torch.tensor(ops, device=device),
        torch.tensor(probs, device=device),
        torch.tensor(bins, device=device),
    )


def draw_auto_augment(
    n: int, height: int, width: int, gen: torch.Generator, policy: str = "cifar10"
) -> tuple[Tensor, Tensor]:
    """AutoAugment's random choices: op indices and signed magnitudes, both (n, 2).

    Each sample draws one sub-policy; each of its two steps applies with its probability (else
    the step is Identity), at its magnitude bin of 10, with a random sign for signed ops.
    """
    device = gen.device
    table = magnitude_table(10, height, width).to(device)
    sub_ops, sub_probs, sub_bins = _policy_tensors(POLICIES[policy], device)
    choice = torch.randint(0, len(sub_ops), (n,), generator=gen, device=device)
    applied = torch.rand(n, 2, generator=gen, device=device) <= sub_probs[choice]
    flip = torch.randint(0, 2, (n, 2), generator=gen, device=device).bool()
    ops = sub_ops[choice]
    mags = table[ops, sub_bins[choice]]
    mags = torch.where(flip & _signed_mask(device)[ops], -mags, mags)
    return torch.where(applied, ops, OP_INDEX["Identity"]), mags


def apply_rounds(x: Tensor, ops: Tensor, mags: Tensor) -> Tensor:
    """Apply the drawn ops round by round (columns of ``ops`` and ``mags``)."""
    ops, mags = ops.to(x.device), mags.to(x.device, x.dtype)
    for k in range(ops.shape[1]):
        x = apply_ops(x, ops[:, k], mags[:, k])
    return x


def rand_augment(x: Tensor, gen: torch.Generator, num_ops: int = 2, magnitude: int = 9) -> Tensor:
    """RandAugment on a batch of unit-range images, per-sample choices from ``gen``."""
    ops, mags = draw_rand_augment(x.shape[0], x.shape[2], x.shape[3], gen, num_ops, magnitude)
    return apply_rounds(x, ops, mags)


def auto_augment(x: Tensor, gen: torch.Generator, policy: str = "cifar10") -> Tensor:
    """AutoAugment (``policy``: ``"cifar10"`` or ``"imagenet"``) on a batch of unit-range images."""
    ops, mags = draw_auto_augment(x.shape[0], x.shape[2], x.shape[3], gen, policy)
    return apply_rounds(x, ops, mags)


__all__ = [
    "OP_NAMES",
    "POLICIES",
    "apply_ops",
    "apply_rounds",
    "auto_augment",
    "draw_auto_augment",
    "draw_rand_augment",
    "magnitude_table",
    "rand_augment",
]
