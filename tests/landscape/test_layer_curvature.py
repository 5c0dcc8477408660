"""Per-layer curvature against the dense Hessian's diagonal blocks of a tiny network."""

import numpy as np
import pytest
import torch
from curvature_cases import dense_hessian, tiny_problem

from landscape.curvature.layers import layer_curvature, parameter_groups


def test_groups_follow_module_paths():
    model, *_ = tiny_problem(0)
    names = [n for n, _ in model.named_parameters()]
    groups = parameter_groups(model, depth=1)
    assert [p for g in groups.values() for p in g] == names
    assert all(p.rsplit(".", 1)[0].split(".")[0] == g for g, ps in groups.items() for p in ps)
    only = parameter_groups(model, depth=1, include=names[:1])
    assert list(only.values()) == [names[:1]]


@pytest.mark.parametrize("seed", range(3))
def test_block_eigenvalues_and_traces_match_the_dense_blocks(seed):
    model, loss_fn, x, y = tiny_problem(seed)
    result = layer_curvature(model, loss_fn, [(x, y)], depth=1, tol=1e-8, rtol=0.01, seed=seed)
    full = dense_hessian(model, loss_fn, [(x, y)])
    total = 0.0
    for group, names, n in zip(result.groups, result.parameters, result.n_parameters, strict=True):
        block = dense_hessian(model, loss_fn, [(x, y)], list(names))
        exact_top = float(torch.linalg.eigvalsh(block)[-1])
        i = result.groups.index(group)
        assert result.converged[i]
        assert abs(result.lambda_max[i] - exact_top) <= result.lambda_max_bound[i] + 1e-10
        exact_trace = float(torch.trace(block))
        lo, hi = result.trace_interval[i]
        assert lo - 1e-9 <= exact_trace <= hi + 1e-9
        assert result.trace_per_parameter[i] == pytest.approx(result.trace[i] / n)
        assert n == block.shape[0]
        total += exact_trace
    # Diagonal blocks tile the diagonal: their traces add up to the full trace.
    assert total == pytest.approx(float(torch.trace(full)), rel=1e-10)
    # Cauchy interlacing: no block's top eigenvalue exceeds the full Hessian's.
    assert max(result.lambda_max) <= float(torch.linalg.eigvalsh(full)[-1]) + 1e-8
    assert np.all(np.asarray(result.n_hvp) > 0)
