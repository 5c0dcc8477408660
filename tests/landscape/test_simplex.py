"""The simplex of three students: corners, edges and barrier against direct computations."""

import numpy as np
import pytest
import torch
from torch import nn

from landscape.geometry.evaluate import evaluate
from landscape.geometry.interpolate import interpolate
from landscape.measures.simplex import barycentric_grid, simplex_barrier, simplex_surface


def _students():
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).eval())
    return nets


def _data():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(48, 5, generator=g)
    return [
        (x[:30], torch.randint(0, 3, (30,), generator=g)),
        (x[30:], torch.randint(0, 3, (18,), generator=g)),
    ]


def test_grid_covers_the_simplex_corners_first():
    w = barycentric_grid(4)
    assert len(w) == 15 and np.allclose(w.sum(axis=1), 1) and (w >= -1e-12).all()
    assert np.allclose(w[:3], np.eye(3))


def test_barrier_is_the_rise_above_the_plane_through_the_corners():
    w = barycentric_grid(2)  # corners, then (0.5, 0, 0.5)... six points
    f = w @ np.array([1.0, 2.0, 3.0])  # a plane: no rise anywhere
    assert simplex_barrier(w, f) == pytest.approx(0.0, abs=1e-12)
    bumped = f.copy()
    bumped[4] += 0.7
    assert simplex_barrier(w, bumped) == pytest.approx(0.7)
    assert np.isnan(simplex_barrier(w, np.r_[f[:-1], np.nan]))


def test_corners_are_the_students_and_edges_the_interpolation_curves():
    nets, data = _students(), _data()
    states = [n.state_dict() for n in nets]
    result = simplex_surface(nets[0], states, data, divisions=4, bn="keep", show_progress=False)
    for i, net in enumerate(nets):
        own = evaluate(net, None, data)
        assert result["loss"][i] == pytest.approx(own.loss, rel=1e-6)
    w = np.asarray(result["weights"])
    alphas = np.linspace(0, 1, 5)
    curve = interpolate(
        nets[0], states[0], states[1], data, alphas=alphas, bn="keep", show_progress=False
    )
    on_edge = np.abs(w[:, 2]) < 1e-12  # c = 0: the line from student 0 to student 1
    by_alpha = {
        round(float(b), 6): loss for (_, b, _), loss, e in zip(w, result["loss"], on_edge) if e
    }
    for a, loss in zip(curve.alphas, curve.loss):
        if 0 <= a <= 1:
            assert by_alpha[round(float(a), 6)] == pytest.approx(float(loss), rel=1e-5)
    assert result["barrier"] >= max(0.0, curve.barrier - 1e-6)  # the edge is part of the simplex
