import pytest
import torch

from okdph.augment import AugmentError, build_pipeline, list_ops


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_pipelines_are_repeatable_for_a_seed_and_differ_across_samples():
    x = torch.rand(16, 1, 8, 8)
    pipe = build_pipeline("shift+scale+noise", "image")
    a, b = pipe(x, _gen(3)), pipe(x, _gen(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, pipe(x, _gen(4)))
    same = torch.stack([x[0]] * 16)
    out = build_pipeline("shift:2", "image")(same, _gen(0))
    assert len({tuple(o.flatten().tolist()) for o in out}) > 1  # per-sample randomness


def test_shift_is_a_zero_padded_random_crop():
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(50, 1, 1, 1)
    out = build_pipeline("shift:2", "image")(x, _gen(1))
    for o in out:
        # Find the offset from the position of the value 27 (row 3, col 3), then compare exactly.
        nz = (o[0] == 27).nonzero()
        if len(nz) == 0:
            continue
        dy, dx = int(nz[0, 0]) - 3, int(nz[0, 1]) - 3
        assert abs(dy) <= 2 and abs(dx) <= 2
        expected = torch.zeros(8, 8)
        src = x[0, 0]
        for i in range(8):
            for j in range(8):
                if 0 <= i - dy < 8 and 0 <= j - dx < 8:
                    expected[i, j] = src[i - dy, j - dx]
        assert torch.equal(o[0], expected)


def test_signal_shift_moves_the_whole_signal():
    x = torch.arange(1.0, 11.0).repeat(20, 1)
    out = build_pipeline("shift:3", "signal")(x, _gen(0))
    for o in out:
        kept = o[o != 0]
        assert torch.equal(kept, torch.arange(kept[0].item(), kept[0].item() + len(kept)))
        assert len(kept) >= 7


def test_cutout_zeroes_one_square_of_the_given_side():
    x = torch.ones(200, 3, 16, 16)
    out = build_pipeline("cutout:4", "image")(x, _gen(0))
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert torch.all(zeros <= 16) and torch.any(zeros == 16)  # clipped at the border sometimes
    assert torch.equal(out[:, 0], out[:, 1])  # the same hole in every channel


def test_flip_and_rotation_keep_shape_and_flip_is_exact():
    x = torch.rand(64, 3, 8, 8)
    out = build_pipeline("flip", "image")(x, _gen(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert torch.all(flipped | kept) and flipped.any() and kept.any()
    rotated = build_pipeline("rot:10+scale:0.1", "image")(x, _gen(0))
    assert rotated.shape == x.shape and torch.isfinite(rotated).all()


def test_bad_specs_are_rejected_with_a_clear_message():
    assert "shift" in list_ops()
    with pytest.raises(AugmentError, match="unknown augmentation 'blur'"):
        build_pipeline("shift+blur", "image")
    with pytest.raises(AugmentError, match="does not apply to signal data"):
        build_pipeline("flip", "signal")
    with pytest.raises(AugmentError, match="is not a number"):
        build_pipeline("noise:lots", "image")
