"""Stochastic trace estimators for symmetric operators given only as block products.

* Hutchinson: ``tr(H) ~ mean_i z_i^T H z_i`` over Rademacher probes ``z_i``. Its standard error is
  the sample standard deviation of the ``z_i^T H z_i`` over the square root of their number.
* Hutch++ (Meyer, Musco, Musco and Woodruff, 2021): with an orthonormal basis ``Q`` of ``H S`` for a
  random sketch ``S``, ``tr(H) = tr(Q^T H Q) + tr(P H P)`` with ``P = I - Q Q^T``. The first term
  is computed exactly; Hutchinson estimates the second, whose variance ``2 ||P H P||_F^2`` is far
  smaller than ``2 ||H||_F^2`` when a few eigenvalues dominate, as in trained networks. Probes for
  the second term are drawn after ``Q`` is fixed, so given ``Q`` the estimate is unbiased and its
  standard error is that of the Hutchinson part alone (the first term has none).

The sketch grows block by block while it pays (adaptive Hutch++). Each block's products
``Y = H Z`` first give residual probes for the current ``Q`` (``Z`` is independent of it); they
also measure how much of the residual the previous block's products would capture if added to
``Q``: ``rho = ||P' P Y||^2 / ||P Y||^2`` estimates the variance ratio after growing, since the
Hutchinson variance of ``P H P`` is about ``2 ||P H||_F^2``. The previous block joins the sketch
(costing one product per new direction) only when the products it is expected to save exceed that
cost. With a flat spectrum ``rho`` is about 1, nothing is added and Hutch++ is Hutchinson; with a
decaying one the sketch grows until the residual is cheap to finish. No probe is wasted: the
estimates of the successive sketches (each unbiased, and uncorrelated with one another) are
combined with inverse-variance weights, and the standard error is that of the combination. (As
with any estimate whose stopping or weighting uses its own samples, a bias far below the standard
error is possible.)

Both estimators stop at the first block where the standard error is at most ``rtol`` times the
estimate (with at least ``min_probes`` probes), or when the product budget is spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from landscape.core.batches import Batch
from landscape.core.definitions import definition
from landscape.core.distributed import is_rank0
from landscape.core.errors import LandscapeError
from landscape.core.progress import progress
from landscape.core.records import ResultMixin
from landscape.curvature.lanczos import breakdown_level
from landscape.curvature.products import (
    HessianOperator,
    LossFn,
    ProblemInfo,
    as_operator,
    rademacher,
    seeded_generator,
)

MatMat = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class TraceEstimate:
    """Result of :func:`hutchinson` or :func:`hutchpp`.

    Attributes:
        value: the trace estimate.
        stderr: standard error of ``value``: of the probe mean for Hutchinson; for Hutch++, of
            the inverse-variance combination of the stages' estimates, each given its sketch.
        n_matvec: products used, sketch included.
        n_probes: Hutchinson probes behind ``value`` (residual probes for Hutch++, all stages).
        sketch_size: rank of the final exactly handled part (0 for Hutchinson).
        low_rank: ``tr(Q^T H Q)`` of the final sketch (0 for Hutchinson).
        converged: ``stderr <= rtol * |value|`` was reached within the budget.
    """

    value: float
    stderr: float
    n_matvec: int
    n_probes: int
    sketch_size: int
    low_rank: float
    converged: bool


def _mean_stderr(samples: list[float]) -> tuple[float, float]:
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()), math.inf
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def _reached(value: float, stderr: float, n: int, rtol: float, min_probes: int) -> bool:
    return n >= min_probes and stderr <= rtol * abs(value)


def hutchinson(
    matmat: MatMat,
    n: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
    rtol: float = 1e-2,
    max_matvec: int = 1000,
    block: int = 10,
    min_probes: int = 10,
    on_step: Callable[[int], None] | None = None,
) -> TraceEstimate:
    """Hutchinson's estimator with Rademacher probes, ``block`` probes per product call.

    It is Hutch++ whose sketch never grows: the same probes, products and stopping rule.
    """
    return hutchpp(
        matmat,
        n,
        generator=generator,
        dtype=dtype,
        device=device,
        rtol=rtol,
        max_matvec=max_matvec,
        block=block,
        min_probes=min_probes,
        max_sketch=0,
        on_step=on_step,
    )


def _residual_samples(z: Tensor, hz: Tensor, q: Tensor, qhq: Tensor) -> list[float]:
    """``z^T P H P z`` for each row, with ``P = I - Q^T Q`` (rows of ``q`` orthonormal)."""
    plain = (z * hz).sum(dim=1)
    if len(q) == 0:
        return plain.double().cpu().tolist()
    qz, qhz = z @ q.T, hz @ q.T
    out = plain - 2 * (qz * qhz).sum(dim=1) + ((qz @ qhq) * qz).sum(dim=1)
    return out.double().cpu().tolist()


def _combine(stages: list[tuple[float, list[float]]]) -> tuple[float, float, int]:
    """Inverse-variance combination of ``(low_rank, residual samples)`` stage estimates.

    Returns the estimate, its standard error and the number of probes used; stages with fewer
    than two probes have no variance estimate and are left out (a lone probe still gives an
    estimate, with an infinite standard error).
    """
    parts = []
    for low, x in stages:
        if len(x) > 1:
            mean, se = _mean_stderr(x)
            parts.append((low + mean, se, len(x)))
    if not parts:
        low, x = stages[-1]
        return (low + _mean_stderr(x)[0] if x else math.nan), math.inf, len(x)
    exact = [value for value, se, _ in parts if se == 0]
    if exact:
        return exact[-1], 0.0, sum(m for *_, m in parts)
    weights = np.array([1 / se**2 for _, se, _ in parts])
    values = np.array([value for value, _, _ in parts])
    total = float(weights.sum())
    return float(weights @ values / total), total**-0.5, sum(m for *_, m in parts)


def _orthonormal_complement(y: Tensor, q: Tensor, dtype: torch.dtype) -> Tensor:
    """Orthonormal rows spanning the rows of ``y`` minus their projection on the rows of ``q``."""
    for _ in range(2):
        y = y - (y @ q.T) @ q
    basis, r = torch.linalg.qr(y.T)
    diag = r.diagonal().abs()
    keep = diag > breakdown_level(dtype) * max(float(diag.max()), 1e-300)
    return basis.T[keep]


def _capture_ratio(hz: Tensor, q: Tensor, add: Tensor) -> float:
    """``||P' P Y||^2 / ||P Y||^2``: the residual energy of fresh products left after growing."""
    resid = hz - (hz @ q.T) @ q
    before = float(resid.square().sum())
    after = float((resid - (resid @ add.T) @ add).square().sum())
    return after / before if before > 0 else 1.0


def hutchpp(
    matmat: MatMat,
    n: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
    rtol: float = 1e-2,
    max_matvec: int = 1000,
    block: int = 10,
    min_probes: int = 10,
    max_sketch: int = 200,
    on_step: Callable[[int], None] | None = None,
) -> TraceEstimate:
    """Adaptive Hutch++ (see the module notes) with Rademacher sketch and probe vectors."""
    q = torch.zeros(0, n, dtype=dtype, device=device)
    hq = torch.zeros(0, n, dtype=dtype, device=device)
    qhq = torch.zeros(0, 0, dtype=dtype, device=device)
    stages: list[tuple[float, list[float]]] = [(0.0, [])]
    candidate: Tensor | None = None
    used = 0
    value, stderr, probes = math.nan, math.inf, 0
    while used < max_matvec:
        z = rademacher((min(block, max_matvec - used), n), generator, dtype, device)
        hz = matmat(z)
        used += len(z)
        stages[-1][1].extend(_residual_samples(z, hz, q, qhq))
        value, stderr, probes = _combine(stages)
        if on_step is not None:
            on_step(used)
        if _reached(value, stderr, probes, rtol, min_probes):
            break
        samples = stages[-1][1]
        if candidate is not None and len(samples) > 1 and used + len(candidate) < max_matvec:
            add = _orthonormal_complement(candidate, q, dtype)
            var_now = float(np.var(samples, ddof=1))
            ratio = _capture_ratio(hz, q, add) if len(add) else 1.0
            budget = max_matvec - used - len(add)
            if rtol > 0:  # products still needed at the current variance, at the target
                needed = var_now * max(0.0, (rtol * value) ** -2 - stderr**-2)
                grow = needed * (1 - ratio) > len(add)
            else:  # no target: maximise the precision the remaining budget buys
                grow = budget / max(ratio, 1e-300) > budget + len(add)
            if grow and len(add):
                h_add = matmat(add)
                used += len(add)
                q, hq = torch.cat([q, add]), torch.cat([hq, h_add])
                qhq = q @ hq.T
                qhq = (qhq + qhq.T) / 2
                stages.append((float(torch.trace(qhq).double()), []))
                if on_step is not None:
                    on_step(used)
        # This block's products may join the sketch next time (its probes are already used).
        candidate = hz if len(q) + len(hz) <= min(max_sketch, n) else None
    return TraceEstimate(
        value=value,
        stderr=stderr,
        n_matvec=used,
        n_probes=probes,
        sketch_size=len(q),
        low_rank=stages[-1][0],
        converged=_reached(value, stderr, probes, rtol, min_probes),
    )


@dataclass(frozen=True)
class Trace(ResultMixin):
    """The Hessian trace from :func:`hessian_trace`.

    Attributes:
        value: the estimate of ``tr(H)``.
        stderr: its standard error. Hutchinson: the sample standard deviation of the probes
            ``z^T H z`` over the square root of their number. Hutch++: the part of the trace in
            the sketched subspace is computed exactly and only the probes of the remainder are
            random, so this is the standard error of the remainder's estimate (combined over the
            successive sketches with inverse-variance weights). Both estimators are unbiased;
            ``value +- 2 stderr`` is an approximate 95% interval.
        n_hvp: Hessian-vector products used (sketch included).
        method: ``"hutch++"`` or ``"hutchinson"``.
        rtol: requested relative standard error.
        converged: ``stderr <= rtol * |value|`` was reached within ``max_hvp``.
        n_probes: Hutchinson probes behind ``value``.
        sketch_size: rank of the exact low-rank part (Hutch++; 0 when deflation would not pay).
        low_rank: its trace ``tr(Q^T H Q)``.
        max_hvp, seed: the settings used.
        problem: the Hessian analysed.
        definition: the measure's versioned definition (``landscape.core.definitions``).
    """

    value: float
    stderr: float
    n_hvp: int
    method: str
    rtol: float
    converged: bool
    n_probes: int
    sketch_size: int
    low_rank: float
    max_hvp: int
    seed: int
    problem: ProblemInfo
    definition: str = definition("trace")


def hessian_trace(
    model: nn.Module | HessianOperator,
    loss_fn: LossFn | None = None,
    data: Iterable[Batch] | None = None,
    method: str = "hutch++",
    rtol: float = 1e-2,
    *,
    max_hvp: int = 1000,
    block: int = 10,
    min_probes: int = 10,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    distributed: bool | None = None,
    show_progress: bool = True,
) -> Trace:
    """The Hessian trace by adaptive Hutch++ (default) or Hutchinson, to a relative standard error.

    Probes are Rademacher vectors from a generator seeded with ``seed``, ``block`` of them per data
    pass. Estimation stops at the first block where the standard error is at most ``rtol`` times
    the estimate (after at least ``min_probes`` probes) or when ``max_hvp`` products are spent.
    See :mod:`landscape.curvature.trace` for the estimators and :class:`Trace` for what ``stderr`` means.

    Args:
        model, loss_fn, data, include, exclude, device, dtype, distributed: as for
            :func:`~landscape.curvature.eigenvalues.top_eigenvalues`.
        method: ``"hutch++"`` or ``"hutchinson"``.
        rtol: target relative standard error (0: spend the whole budget).
        max_hvp: Hessian-vector product budget.
        block: probes per data pass.
        min_probes: fewest probes behind a standard error used to stop.
        seed: seed of the probes.
        show_progress: show a progress bar on stderr (rank 0 only when distributed).

    Returns:
        A :class:`Trace`.
    """
    if method not in ("hutch++", "hutchinson"):
        raise LandscapeError(f"method must be 'hutch++' or 'hutchinson', not {method!r}")
    if rtol < 0 or max_hvp < 2 or block < 1:
        raise LandscapeError("rtol must be non-negative, max_hvp at least 2 and block positive")
    op = as_operator(
        model,
        loss_fn,
        data,
        include=include,
        exclude=exclude,
        device=device,
        dtype=dtype,
        distributed=distributed,
    )
    used = op.n_hvp
    estimator = hutchpp if method == "hutch++" else hutchinson
    with progress(total=max_hvp, desc=method, enable=show_progress and is_rank0()) as bar:
        est = estimator(
            op.matmat,
            op.n,
            generator=seeded_generator(seed),
            dtype=op.dtype,
            device=op.device,
            rtol=rtol,
            max_matvec=max_hvp,
            block=block,
            min_probes=min_probes,
            on_step=lambda n: bar.update(n - bar.n),
        )
    return Trace(
        value=est.value,
        stderr=est.stderr,
        n_hvp=op.n_hvp - used,
        method=method,
        rtol=rtol,
        converged=est.converged,
        n_probes=est.n_probes,
        sketch_size=est.sketch_size,
        low_rank=est.low_rank,
        max_hvp=max_hvp,
        seed=seed,
        problem=op.info,
    )
