"""Surfaces: centre sanity, exact paraboloids, planes through models, NaN reports, resume, ranks."""

import json
import socket

import numpy as np
import pytest
import torch
from geometry_cases import (
    distributed_surface_worker,
    image_batches,
    plain_eval,
    regression_case,
    regression_loss,
    theta_of,
    tiny_convnet,
)
from torch import nn

from landscape.core.errors import LandscapeError
from landscape.core.records import json_safe
from landscape.geometry.directions import random_direction
from landscape.geometry.subspace import pca_trajectory, plane_through
from landscape.geometry.surface import grid_coordinates, plane_grid, span_coordinates, surface
from landscape.geometry.weights import as_state, buffer_names, parameter_names


def test_surface_centre_equals_the_models_own_loss():
    model, batches = tiny_convnet(0), image_batches()
    result = surface(model, model.state_dict(), batches, grid=(0.5, 5), bn_center="own")
    own, own_acc = plain_eval(model, None, batches)
    assert result.center_index == (2, 2)
    assert result.loss[2, 2] == pytest.approx(own, rel=2e-6)
    assert result.center_loss == pytest.approx(own, rel=2e-6)
    assert result.accuracy[2, 2] == pytest.approx(own_acc)
    assert result.units == "filter-normalised direction units"
    assert result.bn == "recalibrate" and result.bn_center == "own"
    # By default the centre follows the policy like every other point (as in landscape analyze).
    policy = surface(model, model.state_dict(), batches, grid=(0.5, 5))
    assert policy.bn_center == "policy" and policy.center_loss == pytest.approx(own, rel=2e-6)
    assert policy.loss[2, 2] != pytest.approx(own, rel=1e-6)
    assert result.loss.shape == (5, 5) and result.n_nonfinite == 0
    assert result.directions["kind"] == "random" and result.directions["seed"] == 0
    assert "bn1.weight" not in result.parameters  # 1-D tensors do not move by default
    d = result.to_dict()
    assert d["engine"]["n_samples"] == 40 and len(d["coordinates"]) == 2
    json.dumps(json_safe(d), allow_nan=False)


def test_quadratic_loss_gives_the_exact_paraboloid():
    model, batches, loss_fn, x1, y = regression_case()
    center = as_state(model)
    names = parameter_names(model)
    dirs = [
        random_direction(center, names, seed=s, normalization="none", include_1d=True)
        for s in (1, 2)
    ]
    result = surface(model, center, batches, directions=dirs, grid=(2.0, 5), loss_fn=loss_fn)
    t0, d1, d2 = theta_of(center), theta_of(dirs[0]), theta_of(dirs[1])
    xs, ys = result.coordinates
    expected = np.array([[regression_loss(t0 + a * d1 + b * d2, x1, y) for b in ys] for a in xs])
    np.testing.assert_allclose(result.loss, expected, rtol=1e-13)
    assert result.units == "direction units (user-supplied)"


def test_grids_are_symmetric_and_hold_the_centre_exactly():
    xs = grid_coordinates(1.0, 21)
    assert xs[10] == 0.0 and np.all(xs == -xs[::-1]) and xs[-1] == pytest.approx(1.0)
    np.testing.assert_array_equal(xs, np.arange(-10, 11) * 0.1)
    with pytest.raises(LandscapeError, match="odd"):
        grid_coordinates(1.0, 20)
    span = span_coordinates(-0.3, 1.2, 16)
    assert 0.0 in span and span[0] <= -0.3 and span[-1] >= 1.2


def test_one_dimensional_line():
    model, batches = tiny_convnet(0), image_batches()
    line = surface(model, None, batches, dims=1, grid=(1.0, 7), bn="keep")
    assert line.loss.shape == (7,) and line.center_index == (3,)
    assert line.loss[3] == pytest.approx(plain_eval(model, None, batches)[0], rel=2e-6)


def test_plane_through_three_models_hits_them_with_interpolated_statistics():
    model = tiny_convnet(0, dtype=torch.float64)
    batches = image_batches(dtype=torch.float64)
    states = [as_state(tiny_convnet(s, dtype=torch.float64)) for s in (0, 1, 2)]
    plane = plane_through(*states, parameter_names(model), buffers=buffer_names(model))
    (bx, _), (cx, cy) = plane.coordinates["b"], plane.coordinates["c"]
    result = surface(
        model, None, batches, directions=plane, grid=[[0.0, bx, cx], [0.0, cy]], bn="interpolate"
    )
    assert result.units == "L2 distance"
    assert result.loss[1, 0] == pytest.approx(plain_eval(model, states[1], batches)[0], rel=1e-10)
    assert result.loss[2, 1] == pytest.approx(plain_eval(model, states[2], batches)[0], rel=1e-10)
    assert result.loss[0, 0] == pytest.approx(plain_eval(model, states[0], batches)[0], rel=1e-10)
    assert result.directions["kind"] == "plane"
    xs, ys = plane_grid(plane, points=11, margin=0.2)
    assert 0.0 in xs and 0.0 in ys and xs[-1] >= bx and ys[-1] >= cy


def test_pca_plane_passes_through_the_checkpoints():
    model = tiny_convnet(0, dtype=torch.float64)
    batches = image_batches(dtype=torch.float64)
    ckpts = [as_state(tiny_convnet(s, dtype=torch.float64)) for s in (3, 4, 5)]
    names = parameter_names(model)
    pca = pca_trajectory(ckpts, names, k=2)  # three points span exactly a plane
    (x0, y0), (x1, y1) = pca.coordinates[0], pca.coordinates[1]
    result = surface(model, None, batches, directions=pca, grid=[[x0, 0.0], [y0, 0.0]], bn="keep")
    assert result.units == "L2 distance" and result.directions["kind"] == "pca"
    assert result.loss[1, 1] == pytest.approx(plain_eval(model, ckpts[2], batches)[0], rel=1e-12)
    # With the last checkpoint's BatchNorm statistics kept, the point at checkpoint 0's
    # coordinates is checkpoint 0's weights.
    expected = {**ckpts[0], **{k: v for k, v in ckpts[2].items() if k not in names}}
    assert result.loss[0, 0] == pytest.approx(plain_eval(model, expected, batches)[0], rel=1e-10)
    assert (x1, y1) != (x0, y0)


class _SqrtModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor([0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sqrt(self.p)


def test_nonfinite_losses_are_counted_and_masked_not_replaced():
    x = torch.ones(4, 1)
    result = surface(
        _SqrtModel(),
        None,
        [(x, x)],
        directions=[{"p": torch.tensor([1.0])}],
        grid=(2.0, 5),
        loss_fn=nn.MSELoss(),
    )
    assert result.n_nonfinite == 2
    np.testing.assert_array_equal(result.nonfinite, [True, True, False, False, False])
    assert np.isnan(result.loss[:2]).all() and np.isfinite(result.loss[2:]).all()


class _Stop(Exception):
    pass


class _CountingLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return nn.functional.cross_entropy(out, y)


def test_interrupted_surface_resumes_to_the_same_numbers(tmp_path):
    model, batches = tiny_convnet(0), image_batches()
    counter = _CountingLoss()
    kwargs = {
        "grid": (1.0, 5),
        "chunk_points": 4,
        "chunk_size": 40,
        "loss_fn": counter,
        "points_per_pass": 1,
    }
    full = surface(model, None, batches, **kwargs)

    def stop_after_two(done: int, total: int) -> None:
        assert total == 7
        if done == 2:
            raise _Stop

    with pytest.raises(_Stop):
        surface(model, None, batches, store=tmp_path / "s", callback=stop_after_two, **kwargs)
    stored = sorted(p.name for p in (tmp_path / "s").glob("chunk_*.npz"))
    assert stored == ["chunk_00000.npz", "chunk_00001.npz"]
    assert not list((tmp_path / "s").glob("*.tmp"))
    counter.calls = 0
    resumed = surface(model, None, batches, store=tmp_path / "s", **kwargs)
    assert resumed.n_resumed == 8 and resumed.n_computed == 17
    # The missing points, and the centre once more with its own statistics (center_loss).
    assert counter.calls == 17 + 1
    np.testing.assert_array_equal(resumed.loss, full.loss)
    np.testing.assert_array_equal(resumed.accuracy, full.accuracy)
    again = surface(model, None, batches, store=tmp_path / "s", **kwargs)
    assert again.n_computed == 0
    np.testing.assert_array_equal(again.loss, full.loss)


def test_store_with_other_settings_is_refused(tmp_path):
    model, batches = tiny_convnet(0), image_batches()
    surface(model, None, batches, grid=(1.0, 3), bn="keep", store=tmp_path / "s")
    with pytest.raises(LandscapeError, match="coordinates"):
        surface(model, None, batches, grid=(2.0, 3), bn="keep", store=tmp_path / "s")
    with pytest.raises(LandscapeError, match="center"):
        surface(model, tiny_convnet(1), batches, grid=(1.0, 3), bn="keep", store=tmp_path / "s")
    doubled = [(x * 2, y) for x, y in batches]
    with pytest.raises(LandscapeError, match="data"):
        surface(model, None, doubled, grid=(1.0, 3), bn="keep", store=tmp_path / "s")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(LandscapeError, match="not empty"):
        surface(model, None, batches, grid=(1.0, 3), store=tmp_path / "other")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_surface(tmp_path):
    torch.multiprocessing.spawn(
        distributed_surface_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True
    )
    single = surface(tiny_convnet(0), None, image_batches(), grid=(1.0, 5), chunk_points=3)
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_allclose(got["loss"], single.loss, rtol=1e-6)
        np.testing.assert_allclose(got["accuracy"], single.accuracy, rtol=1e-12)
        assert int(got["n_computed"]) == 25
