"""The curvature tracker and train-mode BatchNorm products against dense Hessians (float64)."""

from types import SimpleNamespace

import pytest
import torch
from curvature_cases import DTYPE, dense_hessian
from torch import nn

from landscape.core.errors import LandscapeError
from landscape.curvature.eigenvalues import top_eigenvalues
from landscape.curvature.products import HessianOperator
from landscape.pipeline.track import CurvatureTracker


def _bn_problem(seed=0, n=48):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3)
    ).to(DTYPE)
    gen = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(n, 4, generator=gen, dtype=DTYPE) * 2
    y = torch.randint(0, 3, (n,), generator=gen)
    with torch.no_grad():  # running statistics that differ from any batch's
        model[1].running_mean.uniform_(-1, 1, generator=gen)
        model[1].running_var.uniform_(0.5, 2, generator=gen)
    return model, x, y


def _train_mode_dense(model, batches):
    """Dense Hessian of the batch-statistics loss, dropout off (a copy in that mode)."""
    import copy

    ref = copy.deepcopy(model).eval()
    ref[1].train()
    return dense_hessian(ref, nn.CrossEntropyLoss(), batches)


@pytest.mark.parametrize("seed", range(3))
def test_batch_statistics_products_are_the_train_mode_hessian_and_leave_buffers(seed):
    model, x, y = _bn_problem(seed)
    batches = [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    op = HessianOperator(model, nn.CrossEntropyLoss(), batches, batchnorm="batch")
    dense = _train_mode_dense(model, batches)
    v = torch.randn(op.n, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(op.matvec(v), dense @ v, rtol=1e-9, atol=1e-10)
    eval_op = HessianOperator(model, nn.CrossEntropyLoss(), batches)
    assert not torch.allclose(eval_op.matvec(v), dense @ v, rtol=1e-3)  # a different Hessian
    for k, b in model.named_buffers():
        assert torch.equal(b, buffers[k]), k
    assert op.info.batchnorm == "batch" and eval_op.info.batchnorm == "running"
    with pytest.raises(LandscapeError, match="reverse"):
        HessianOperator(model, nn.CrossEntropyLoss(), batches, batchnorm="batch", method="forward")


def test_a_warm_start_is_used_and_refused_when_malformed():
    model, x, y = _bn_problem(1)
    op = HessianOperator(model, nn.CrossEntropyLoss(), [(x, y)])
    top = torch.linalg.eigh(dense_hessian(model.eval(), nn.CrossEntropyLoss(), [(x, y)]))
    exact = top.eigenvalues[-1].item()
    warm = top_eigenvalues(op, k=1, tol=1e-8, start=top.eigenvectors[:, -1], show_progress=False)
    cold = top_eigenvalues(op, k=1, tol=1e-8, show_progress=False)
    assert warm.values[0] == pytest.approx(exact, rel=1e-8)
    assert warm.n_hvp < cold.n_hvp
    with pytest.raises(LandscapeError, match="start"):
        top_eigenvalues(op, k=1, start=torch.zeros(op.n, dtype=DTYPE), show_progress=False)


def _config(**kw):
    base = dict(bn="train", tol=1e-6, max_iter=200, mix=0.5, trace=False, trace_rtol=0.05)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("bn", ["train", "eval"])
def test_tracker_values_are_certified_against_the_dense_spectrum(bn):
    model, x, y = _bn_problem(2)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(y), 16)]
    tracker = CurvatureTracker(batches, config=_config(bn=bn, trace=True), seed=0)
    dense = (
        _train_mode_dense(model, batches)
        if bn == "train"
        else dense_hessian(model.eval(), nn.CrossEntropyLoss(), batches)
    )
    evals, evecs = torch.linalg.eigh(dense)
    for point in range(2):
        out = tracker.measure({"student_0": model}, point)["student_0"]
        assert abs(out["lambda_max"] - evals[-1].item()) <= out["lambda_max_bound"] + 1e-9
        assert out["lambda_max_bound"] <= 1e-6 * abs(out["lambda_max"]) and out["converged"] == 1
        assert abs(out["trace"] - evals.sum().item()) < 4 * out["trace_stderr"] + 1e-6
    # A stale warm start (the second eigenvector) still finds the top: the random part.
    tracker.vectors["student_0"] = evecs[:, -2].clone()
    start = tracker.start_vector(
        "student_0", HessianOperator(model, nn.CrossEntropyLoss(), batches), 7
    )
    assert abs(float(start @ evecs[:, -2])) == pytest.approx(1 / (1 + 0.25) ** 0.5, rel=0.05)
    out = tracker.measure({"student_0": model}, 5)["student_0"]
    assert out["lambda_max"] == pytest.approx(evals[-1].item(), rel=1e-6)
    state = tracker.state_dict()
    again = CurvatureTracker(batches, config=_config(bn=bn), seed=0)
    again.load_state_dict(state)
    assert torch.equal(again.vectors["student_0"], tracker.vectors["student_0"])
    assert tracker.describe()["samples"] == len(y)
