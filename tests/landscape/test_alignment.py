"""Weight matching: a random hidden-unit permutation is recovered exactly, the function is
unchanged by the alignment, and the aligned barrier vanishes where the unaligned one does not."""

import pytest
import torch
from torch import nn

from landscape.core.errors import LandscapeError
from landscape.geometry.alignment import permutation_spec, permute, weight_matching
from landscape.geometry.interpolate import interpolate
from okdph.models import create

CASES = [
    ("mlp", {"hidden": (16, 12), "bn": True}, (6, 1, 8, 8)),
    ("cnn_digits", {"width": 4}, (6, 1, 8, 8)),
    ("cnn1d", {"width": 4}, (6, 40)),
    ("resnet32", {"widths": (4, 8, 16)}, (2, 3, 32, 32)),
]


def _network(arch, kwargs, shape):
    torch.manual_seed(0)
    net = create(arch, **kwargs).eval()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    for k, v in state.items():  # BatchNorm statistics that matter, as after training
        if k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=gen) + 0.5
        elif k.endswith("running_mean") or (k.endswith("bias") and v.dim() == 1):
            state[k] = 0.3 * torch.randn(v.shape, generator=gen)
    net.load_state_dict(state)
    return net, state, torch.randn(*shape, generator=gen)


@pytest.mark.parametrize("arch,kwargs,shape", CASES, ids=[c[0] for c in CASES])
def test_a_random_permutation_is_recovered_exactly(arch, kwargs, shape):
    net, state, x = _network(arch, kwargs, shape)
    spec = permutation_spec(net, x)
    gen = torch.Generator().manual_seed(1)
    perms = {g: torch.randperm(n, generator=gen) for g, n in spec.sizes.items()}
    shuffled = permute(spec, state, perms)
    assert any(not torch.equal(shuffled[k], state[k]) for k in state)
    with torch.no_grad():
        before = net(x)
        net.load_state_dict(shuffled)
        assert torch.allclose(net(x), before, atol=1e-5)  # a permutation keeps the function
    aligned = weight_matching(spec, state, shuffled)
    for k in state:
        assert torch.equal(aligned.state[k], state[k]), k
    assert aligned.moved > 0 and aligned.n_units == sum(spec.sizes.values())


def test_residual_connections_share_one_group_per_stage():
    net, _, x = _network("resnet32", {"widths": (4, 8, 16)}, (2, 3, 32, 32))
    spec = permutation_spec(net, x)
    # 15 blocks' inner channels, plus one residual stream per stage (stem, blocks, shortcuts).
    assert len(spec.sizes) == 15 + 3
    stream = {a.group for a in spec.axes["conv1.weight"] if a.axis == 0}
    assert stream == {a.group for a in spec.axes["layer1.4.bn2.weight"]}
    assert "fc.bias" not in spec.axes  # the logits are not permuted


def test_the_aligned_barrier_vanishes_and_the_unaligned_does_not():
    net, state, x = _network("mlp", {"hidden": (16, 12), "bn": True}, (64, 1, 8, 8))
    spec = permutation_spec(net, x)
    gen = torch.Generator().manual_seed(2)
    shuffled = permute(
        spec, state, {g: torch.randperm(n, generator=gen) for g, n in spec.sizes.items()}
    )
    with torch.no_grad():
        y = net(x).argmax(1)
    data = [(x, y)]
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    plain = interpolate(
        net, state, shuffled, data, alphas=alphas, bn="interpolate", show_progress=False
    )
    aligned = weight_matching(spec, state, shuffled).state
    matched = interpolate(
        net, state, aligned, data, alphas=alphas, bn="interpolate", show_progress=False
    )
    assert plain.barrier > 0.05
    assert matched.barrier == pytest.approx(0.0, abs=1e-6)


def test_an_operation_it_cannot_follow_is_one_sentence():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

        def forward(self, x):
            return self.head(torch.cat([self.a(x), self.b(x)], dim=1))

    with pytest.raises(LandscapeError, match="does not know the operation 'cat'"):
        permutation_spec(Concat(), torch.randn(2, 4))
