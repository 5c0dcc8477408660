"""Directions, filter normalisation, state handling, planes through models and trajectory PCA."""

import math

import numpy as np
import pytest
import torch
from geometry_cases import tiny_convnet

from landscape.core.errors import LandscapeError
from landscape.geometry.directions import (
    direction_between,
    filter_norms,
    normalize_direction,
    random_direction,
)
from landscape.geometry.subspace import pca_trajectory, plane_through
from landscape.geometry.weights import (
    as_state,
    buffer_names,
    combine,
    dot,
    lerp,
    norm,
    parameter_names,
)
from okdph.models import create


@pytest.mark.parametrize("arch", ["tiny", "resnet32"])
def test_filter_normalised_direction_has_the_weights_filter_norms(arch):
    model = tiny_convnet(0) if arch == "tiny" else create("resnet32")
    state = as_state(model)
    names = parameter_names(model)
    d = random_direction(state, names, seed=3)
    for name in names:
        if state[name].dim() > 1:
            assert torch.allclose(filter_norms(d[name]), filter_norms(state[name]), rtol=1e-5)
        else:  # biases and BatchNorm scale/shift are zeroed by default
            assert torch.count_nonzero(d[name]) == 0


def test_include_1d_rescales_one_dimensional_tensors_as_a_whole():
    model = tiny_convnet(0)
    state = as_state(model)
    d = random_direction(state, parameter_names(model), seed=3, include_1d=True)
    for name in ("bn1.weight", "bn2.bias", "conv2.bias", "fc.bias"):
        assert d[name].norm().item() == pytest.approx(state[name].norm().item(), rel=1e-5)
        assert torch.count_nonzero(d[name]) == d[name].numel()


def test_layer_and_no_normalisation():
    model = tiny_convnet(0)
    state = as_state(model)
    names = parameter_names(model)
    layer = random_direction(state, names, seed=1, normalization="layer")
    raw = random_direction(state, names, seed=1, normalization="none", include_1d=True)
    assert layer["conv2.weight"].norm().item() == pytest.approx(
        state["conv2.weight"].norm().item(), rel=1e-5
    )
    # "none" is the Gaussian itself: same draw, different scale from the layer-normalised one.
    ratio = layer["conv2.weight"] / raw["conv2.weight"]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4)
    with pytest.raises(LandscapeError):
        normalize_direction(raw, state, "bogus")


def test_directions_are_seeded_and_use_no_global_rng():
    model = tiny_convnet(0)
    state = as_state(model)
    names = parameter_names(model)
    torch.manual_seed(123)
    a = random_direction(state, names, seed=5)
    torch.manual_seed(999)
    b = random_direction(state, names, seed=5)
    c = random_direction(state, names, seed=6)
    assert all(torch.equal(a[n], b[n]) for n in names)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    g = torch.Generator().manual_seed(5)
    first, second = random_direction(state, names, seed=g), random_direction(state, names, seed=g)
    assert torch.equal(first["conv1.weight"], a["conv1.weight"])
    assert not torch.equal(second["conv1.weight"], first["conv1.weight"])
    with pytest.raises(LandscapeError):
        random_direction(state, names, seed=None)


def test_zero_filters_get_zero_direction():
    model = tiny_convnet(0)
    state = as_state(model)
    state["conv2.weight"][1].zero_()
    d = random_direction(state, ["conv2.weight"], seed=0)
    assert torch.count_nonzero(d["conv2.weight"][1]) == 0
    assert torch.isfinite(d["conv2.weight"]).all()


def test_as_state_fills_missing_buffers_and_rejects_foreign_weights():
    model = tiny_convnet(0)
    params = {n: p.detach() * 2 for n, p in model.named_parameters()}
    state = as_state(model, params)
    assert torch.equal(state["bn1.running_var"], model.bn1.running_var)
    assert torch.equal(state["fc.weight"], model.fc.weight * 2)
    state["fc.weight"].add_(1.0)  # a copy, never an alias of the inputs
    assert torch.equal(params["fc.weight"], model.fc.weight * 2)
    with pytest.raises(LandscapeError, match="lacks"):
        as_state(model, {"nonsense.weight": torch.zeros(1)})
    with pytest.raises(LandscapeError, match="shape"):
        as_state(model, {"fc.weight": torch.zeros(2, 2)})
    assert as_state(model, tiny_convnet(1))["fc.weight"].equal(tiny_convnet(1).fc.weight)


def test_combine_and_lerp_are_exact_at_grid_points():
    base = {"w": torch.tensor([1.0, -2.0]), "buf": torch.tensor([5.0])}
    d = {"w": torch.tensor([0.1, 0.3])}
    out = combine(base, [(0.0, d), (3 * 0.25, d)])
    assert torch.equal(out["w"], base["w"] + d["w"] * 0.75)
    assert out["buf"] is base["buf"]
    start, end = {"w": torch.tensor([0.3, 0.7])}, {"w": torch.tensor([1.1, -0.9])}
    assert torch.equal(lerp(start, end, 0.0)["w"], start["w"])
    assert torch.equal(lerp(start, end, 1.0)["w"], end["w"])


def test_direction_between_carries_parameters_and_buffers():
    model, a, b = tiny_convnet(0), tiny_convnet(1), tiny_convnet(2)
    d = direction_between(model, a.state_dict(), b.state_dict())
    assert set(d) == set(parameter_names(model)) | set(buffer_names(model))
    assert torch.equal(d["bn1.running_mean"], b.bn1.running_mean - a.bn1.running_mean)
    only_fc = direction_between(model, a, b, include="fc.*")
    assert {n for n in only_fc if n in parameter_names(model)} == {"fc.weight", "fc.bias"}


def test_plane_axes_are_orthonormal_and_reproduce_the_three_models():
    model = tiny_convnet(0)
    a, b, c = (as_state(tiny_convnet(s), dtype=torch.float64) for s in (0, 1, 2))
    names = parameter_names(model)
    plane = plane_through(a, b, c, names, buffers=buffer_names(model), labels=("s0", "s1", "h"))
    u, v = plane.axes
    assert dot(u, u, names) == pytest.approx(1.0, abs=1e-12)
    assert dot(v, v, names) == pytest.approx(1.0, abs=1e-12)
    assert dot(u, v, names) == pytest.approx(0.0, abs=1e-12)
    ab = {n: b[n] - a[n] for n in names}
    ac = {n: c[n] - a[n] for n in names}
    cos = dot(ab, ac, names) / (norm(ab) * norm(ac))
    assert plane.angle_deg == pytest.approx(math.degrees(math.acos(cos)), abs=1e-9)
    assert plane.lengths == pytest.approx((norm(ab), norm(ac)), rel=1e-12)
    for label, model_state in (("s1", b), ("h", c)):
        x, y = plane.coordinates[label]
        point = combine(a, [(x, u), (y, v)])
        for n in names + buffer_names(model):
            assert torch.allclose(point[n], model_state[n], atol=1e-10), (label, n)
    assert plane.coordinates["s0"] == (0.0, 0.0)
    assert plane.to_dict()["units"] == "L2 distance"


def test_plane_angle_on_a_known_configuration():
    a = {"w": torch.zeros(3, dtype=torch.float64)}
    b = {"w": torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)}
    c = {"w": torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)}
    plane = plane_through(a, b, c, ["w"])
    assert plane.angle_deg == pytest.approx(45.0)
    assert plane.coordinates["c"] == pytest.approx((1.0, 1.0))
    assert plane.lengths == pytest.approx((2.0, math.sqrt(2.0)))
    with pytest.raises(LandscapeError, match="collinear"):
        plane_through(a, b, {"w": torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64)}, ["w"])
    with pytest.raises(LandscapeError, match="identical"):
        plane_through(a, a, c, ["w"])


def _trajectory(n: int = 7, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    drift = torch.randn(5, 4, generator=g, dtype=torch.float64)
    out, w = [], torch.randn(5, 4, generator=g, dtype=torch.float64)
    for t in range(n):
        w = w + drift * (0.5 + t / n) + 0.2 * torch.randn(5, 4, generator=g, dtype=torch.float64)
        out.append({"layer.weight": w.clone(), "layer.bias": w[:, 0].clone() * 0.5})
    return out


def test_pca_via_gram_matrix_matches_numpy_svd_of_the_centred_trajectory():
    ckpts = _trajectory()
    names = ["layer.weight", "layer.bias"]
    pca = pca_trajectory(ckpts, names, k=3, origin="mean")
    mat = np.stack([np.concatenate([c[n].numpy().ravel() for n in names]) for c in ckpts])
    centred = mat - mat.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    n = len(ckpts)
    np.testing.assert_allclose(pca.singular_values, s[:3], rtol=1e-10)
    np.testing.assert_allclose(pca.explained_variance, s[:3] ** 2 / (n - 1), rtol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_ratio, s[:3] ** 2 / np.sum(s**2), rtol=1e-10)
    for i, axis in enumerate(pca.axes):
        vec = np.concatenate([axis[nm].numpy().ravel() for nm in names])
        sign = np.sign(vec @ vt[i])
        np.testing.assert_allclose(vec, sign * vt[i], atol=1e-10)
        np.testing.assert_allclose(pca.coordinates[:, i], sign * (centred @ vt[i]), atol=1e-10)
    assert pca.coordinates.shape == (n, 3)


def test_pca_origin_last_measures_from_the_final_model():
    ckpts = _trajectory()
    names = ["layer.weight", "layer.bias"]
    pca = pca_trajectory(ckpts, names, k=2)
    assert pca.origin_kind == "last"
    np.testing.assert_allclose(pca.coordinates[-1], 0.0, atol=1e-12)
    mean_pca = pca_trajectory(ckpts, names, k=2, origin="mean")
    np.testing.assert_allclose(
        pca.coordinates, mean_pca.coordinates - mean_pca.coordinates[-1], atol=1e-10
    )
    d = pca.to_dict()
    assert "axes" not in d and d["units"] == "L2 distance"
    with pytest.raises(LandscapeError):
        pca_trajectory(ckpts[:2], names, k=2)
