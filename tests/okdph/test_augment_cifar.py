"""RandAugment and AutoAugment: every op against torchvision's float semantics, the draws against
the published policies, and the per-sample batching against one-sample-at-a-time application."""

import math

import pytest
import torch
from torchvision.transforms import AutoAugment, AutoAugmentPolicy
from torchvision.transforms.v2 import functional as TF

from okdph.augment import AugmentError, build_pipeline
from okdph.autoaugment import (
    OP_INDEX,
    POLICIES,
    RANDAUGMENT_OPS,
    apply_ops,
    apply_rounds,
    draw_auto_augment,
    draw_rand_augment,
    magnitude_table,
)


def _images(n=6, seed=0, low=0, high=256):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, 32, 32), generator=g).float() / 255


# op, magnitude, torchvision call (as torchvision's RandAugment/AutoAugment make it)
CASES = [
    ("Identity", 0.0, lambda x, m: x),
    *[
        (
            "ShearX",
            m,
            lambda x, m: TF.affine(
                x, 0.0, [0, 0], 1.0, [math.degrees(math.atan(m)), 0.0], center=[0, 0]
            ),
        )
        for m in (0.09, -0.3)
    ],
    *[
        (
            "ShearY",
            m,
            lambda x, m: TF.affine(
                x, 0.0, [0, 0], 1.0, [0.0, math.degrees(math.atan(m))], center=[0, 0]
            ),
        )
        for m in (0.09, -0.3)
    ],
    *[
        ("TranslateX", m, lambda x, m: TF.affine(x, 0.0, [int(m), 0], 1.0, [0.0, 0.0]))
        for m in (4.35, -14.5)
    ],
    *[
        ("TranslateY", m, lambda x, m: TF.affine(x, 0.0, [0, int(m)], 1.0, [0.0, 0.0]))
        for m in (4.35, -7.2)
    ],
    *[("Rotate", m, lambda x, m: TF.rotate(x, m)) for m in (9.0, -30.0)],
    *[("Brightness", m, lambda x, m: TF.adjust_brightness(x, 1 + m)) for m in (0.27, -0.9)],
    *[("Color", m, lambda x, m: TF.adjust_saturation(x, 1 + m)) for m in (0.27, -0.9)],
    *[("Contrast", m, lambda x, m: TF.adjust_contrast(x, 1 + m)) for m in (0.27, -0.9)],
    *[("Sharpness", m, lambda x, m: TF.adjust_sharpness(x, 1 + m)) for m in (0.27, -0.9)],
    *[("Posterize", b, lambda x, b: TF.posterize(x, int(b))) for b in (7.0, 4.0)],
    ("Solarize", 0.7, lambda x, m: TF.solarize(x, m)),
    ("AutoContrast", 0.0, lambda x, m: TF.autocontrast(x)),
    ("Equalize", 0.0, lambda x, m: TF.equalize(x)),
    ("Invert", 0.0, lambda x, m: TF.invert(x)),
]


@pytest.mark.parametrize("name, magnitude, reference", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_every_op_matches_torchvision_on_float_images(name, magnitude, reference):
    # Narrow-range images so AutoContrast and Equalize have something to do.
    x = torch.cat([_images(3), _images(3, seed=1, low=40, high=160)])
    out = apply_ops(x, torch.full((6,), OP_INDEX[name]), torch.full((6,), float(magnitude)))
    assert torch.allclose(out, reference(x, magnitude), atol=2e-7, rtol=0)


def test_mixed_batch_equals_each_sample_on_its_own():
    x = _images(40, seed=2, low=30, high=220)
    g = torch.Generator().manual_seed(0)
    ops = torch.randint(0, len(OP_INDEX), (40,), generator=g)
    mags = torch.tensor([(-1.0) ** i * (0.2 + 0.1 * (i % 5)) for i in range(40)])
    mags = torch.where(ops == OP_INDEX["Posterize"], torch.full_like(mags, 5.0), mags)
    out = apply_ops(x, ops, mags)
    for i in range(40):
        alone = apply_ops(x[i : i + 1], ops[i : i + 1], mags[i : i + 1])
        assert torch.equal(out[i], alone[0]), int(ops[i])


def test_magnitudes_are_torchvisions_bins():
    rand = magnitude_table(31, 32, 32)[:, 9]  # RandAugment's default magnitude 9 of 31
    expected = {
        "ShearX": 0.3 * 9 / 30,
        "TranslateX": 150 / 331 * 32 * 9 / 30,
        "Rotate": 9.0,
        "Brightness": 0.9 * 9 / 30,
        "Posterize": 7.0,  # 8 - round(9 / 7.5)
        "Solarize": 1.0 - 9 / 30,
        "Equalize": 0.0,
    }
    for name, value in expected.items():
        assert rand[OP_INDEX[name]].item() == pytest.approx(value, rel=1e-6), name
    auto = magnitude_table(10, 32, 32)
    assert auto[OP_INDEX["Posterize"]].tolist() == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert auto[OP_INDEX["Rotate"], 9].item() == pytest.approx(30.0)


def test_policies_are_torchvisions():
    assert list(POLICIES["cifar10"]) == AutoAugment(AutoAugmentPolicy.CIFAR10).policies
    assert list(POLICIES["imagenet"]) == AutoAugment(AutoAugmentPolicy.IMAGENET).policies


def test_randaugment_draws_are_uniform_signed_and_per_sample():
    g = torch.Generator().manual_seed(0)
    ops, mags = draw_rand_augment(20000, 32, 32, g)
    assert ops.shape == (20000, 2) and int(ops.max()) == len(RANDAUGMENT_OPS) - 1
    freq = torch.bincount(ops.flatten(), minlength=14).float() / ops.numel()
    assert torch.allclose(freq, torch.full((14,), 1 / 14), atol=0.006)
    rotate = mags[ops == OP_INDEX["Rotate"]]
    assert set(rotate.abs().tolist()) == {9.0}
    assert abs((rotate < 0).float().mean().item() - 0.5) < 0.03
    assert (mags[ops == OP_INDEX["Posterize"]] == 7).all()  # unsigned


@pytest.mark.parametrize("policy", ["cifar10", "imagenet"])
def test_autoaugment_draws_follow_the_policy(policy):
    table = POLICIES[policy]
    g = torch.Generator().manual_seed(1)
    ops, mags = draw_auto_augment(30000, 32, 32, g, policy)
    bins = magnitude_table(10, 32, 32)
    # Each step is the sub-policy's op or Identity, with its bin's magnitude up to sign.
    allowed = {(OP_INDEX[a[0]], OP_INDEX[b[0]]) for a, b in table}
    pairs = set(map(tuple, ops.tolist()))
    identity = OP_INDEX["Identity"]
    for first, second in pairs:
        assert any(first in (a, identity) and second in (b, identity) for a, b in allowed), (
            first,
            second,
        )
    # Frequency of each op at step 0 = sum over sub-policies of p / 25.
    for name in {a[0] for a, _ in table}:
        expected = sum(p for (op, p, _), _ in table if op == name) / len(table)
        observed = (ops[:, 0] == OP_INDEX[name]).float().mean().item()
        assert observed == pytest.approx(expected, abs=0.01), name
    # Magnitudes are the bins the policy names for that op at that step.
    for step in (0, 1):
        named = {
            (OP_INDEX[s[step][0]], bins[OP_INDEX[s[step][0]], s[step][2] or 0].item())
            for s in table
        }
        applied = ops[:, step] != identity
        drawn = set(zip(ops[applied, step].tolist(), mags[applied, step].abs().tolist()))
        assert drawn == named


def test_pipelines_are_repeatable_per_sample_and_in_range():
    x = _images(1).repeat(32, 1, 1, 1)
    for spec in ("crop+randaugment", "autoaugment", "autoaugment_imagenet", "randaugment:20"):
        pipe = build_pipeline(spec, "image")
        a = pipe(x, torch.Generator().manual_seed(5))
        assert torch.equal(a, pipe(x, torch.Generator().manual_seed(5)))
        assert 0.0 <= a.min() and a.max() <= 1.0
        assert len({tuple(o.flatten().tolist()) for o in a}) > 8, spec  # per-sample draws


def test_rounds_apply_in_order():
    x = _images(4)
    ops = torch.tensor([[OP_INDEX["Invert"], OP_INDEX["Solarize"]]] * 4)
    mags = torch.tensor([[0.0, 0.5]] * 4)
    expected = TF.solarize(TF.invert(x), 0.5)
    assert torch.equal(apply_rounds(x, ops, mags), expected)


def test_bad_specs():
    with pytest.raises(AugmentError, match="magnitude must lie in 0..30"):
        build_pipeline("randaugment:31", "image")
    with pytest.raises(AugmentError, match="does not apply to signal data"):
        build_pipeline("autoaugment", "signal")
