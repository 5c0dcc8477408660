"""Stochastic trace estimators for symmetric operators given only as block products.

* Hutchinson: ``tr(H) ~ mean_i z_i^T H z_i`` over Rademacher probes ``z_i``. Its standard error is
  the sample standard deviation of the ``z_i^T H z_i`` over the square root of their number.
* Hutch++ (Meyer, Musco, Musco and Woodruff, 2021): with an orthonormal basis ``Q`` of ``H S`` for a
  random sketch ``S``, ``tr(H) = tr(Q^T H Q) + tr(P H P)`` with ``P = I - Q Q^T``. The first term
  is computed exactly; Hutchinson estimates the second, whose variance ``2 ||P H P||_F^2`` is far
  smaller than ``2 ||H||_F^2`` when a few eigenvalues dominate, as in trained networks. Probes for
  the second term are drawn after ``Q`` is fixed, so given ``Q`` the estimate is unbiased and its
  standard error is that of the Hutchinson part alone (the first term has none).

Adaptive Hutch++ works in stages, each with a fixed sketch ``Q``. A stage starts with a *pilot*
of ``min_probes`` residual probes. Two thirds of the pilot's products ``Y = H Z`` are candidates
for the sketch; the other third, independent of them, measures the share of residual energy they
would leave, ``rho = ||P' P Y||^2 / ||P Y||^2``, an estimate of the variance ratio after growing
(the Hutchinson variance of ``P H P`` is about ``2 ||P H||_F^2``). The candidates join the sketch
(one product per new direction) only when the probes they are expected to save exceed their cost
plus a new pilot; the old pilot's probes, measured against the old sketch, are then discarded.
With a flat spectrum ``rho`` is about 1, nothing is added and Hutch++ is Hutchinson.

In the final stage the pilot only plans: its standard deviation (an upper ``PLAN_CONFIDENCE``
chi-square bound on it) fixes how many probes bring the standard error to ``rtol`` times the
estimate, and that many *fresh* probes (at least ``min_probes``, at most what the budget allows)
give the estimate, its standard error and a Student-t interval. Because the sample size is fixed
before the sample is drawn, the interval is an ordinary fixed-size t interval: stopping at the
first block whose own variance happened to be small, which biased earlier versions' intervals
low (88-92% coverage for a nominal 95%), cannot happen. What remains is the skewness of
``z^T A z`` (large when one eigenvalue dominates), which ``min_probes = 40`` keeps small: over
2000 seeds on flat, power-law, outlier and indefinite spectra the 95% interval covers the true
trace in 94.2-95.2% of runs (``tests/landscape/test_trace.py``). The price is a floor of
``2 * min_probes`` products. ``converged`` states what was reached: ``stderr <= rtol * |value|``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from scipy import stats
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
        value: the trace estimate: ``tr(Q^T H Q)`` plus the mean of the final stage's fresh
            residual probes (the pilot that planned them is not in it).
        stderr: the fresh probes' sample standard deviation over the square root of their count.
        df: degrees of freedom of ``stderr`` (fresh probes minus one); ``interval`` uses the
            Student-t quantile with ``df`` degrees of freedom.
        interval: the two-sided ``confidence`` interval ``value -+ t_df * stderr``.
        confidence: its nominal coverage.
        n_matvec: products used: pilots, sketch and fresh probes.
        n_probes: residual probes behind ``value`` (the fresh ones).
        n_discarded: pilot probes of earlier stages, spent on deciding the sketch.
        sketch_size: rank of the exactly handled part (0 for Hutchinson).
        low_rank: ``tr(Q^T H Q)`` of the final sketch (0 for Hutchinson).
        converged: ``stderr <= rtol * |value|`` was reached within the budget.
    """

    value: float
    stderr: float
    df: int
    interval: tuple[float, float]
    confidence: float
    n_matvec: int
    n_probes: int
    n_discarded: int
    sketch_size: int
    low_rank: float
    converged: bool


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
    min_probes: int = 40,
    confidence: float = 0.95,
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
        confidence=confidence,
        on_step=on_step,
    )


def _residual_samples(z: Tensor, hz: Tensor, q: Tensor, qhq: Tensor) -> Tensor:
    """``z^T P H P z`` for each row, with ``P = I - Q^T Q`` (rows of ``q`` orthonormal), float64."""
    plain = (z * hz).sum(dim=1)
    if len(q) == 0:
        return plain.double().cpu()
    qz, qhz = z @ q.T, hz @ q.T
    out = plain - 2 * (qz * qhz).sum(dim=1) + ((qz @ qhq) * qz).sum(dim=1)
    return out.double().cpu()


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


#: Confidence of the upper bound on the probes' standard deviation that plans a stage's length:
#: planning with the pilot's own estimate would leave the final standard error above the target
#: about half the time.
PLAN_CONFIDENCE = 0.8


def _probes_needed(mean: float, sd: float, n_pilot: int, rtol: float) -> int:
    """Probes that bring ``sigma / sqrt(m)`` to ``rtol * |mean|`` for ``sigma`` the upper
    ``PLAN_CONFIDENCE`` chi-square bound from a pilot of ``n_pilot`` probes with deviation ``sd``
    (``rtol`` 0: no target)."""
    if sd == 0.0:
        return 0
    if rtol <= 0 or mean == 0.0:
        return 2**62
    df = n_pilot - 1
    upper = sd * math.sqrt(df / float(stats.chi2.ppf(1 - PLAN_CONFIDENCE, df)))
    return math.ceil((upper / (rtol * abs(mean))) ** 2)


class _Sampler:
    """Draws Rademacher probe blocks and products within a budget, reporting progress."""

    def __init__(
        self,
        matmat: MatMat,
        n: int,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device,
        budget: int,
        block: int,
        on_step: Callable[[int], None] | None,
    ) -> None:
        self.matmat, self.n, self.gen = matmat, n, generator
        self.dtype, self.device, self.budget, self.block = dtype, device, budget, block
        self.on_step, self.used = on_step, 0

    def left(self) -> int:
        return self.budget - self.used

    def products(self, v: Tensor) -> Tensor:
        out = self.matmat(v)
        self.used += len(v)
        if self.on_step is not None:
            self.on_step(self.used)
        return out

    def probes(self, count: int) -> tuple[Tensor, Tensor]:
        shape = (min(count, self.block, self.left()), self.n)
        z = rademacher(shape, self.gen, self.dtype, self.device)
        return z, self.products(z)


@dataclass(frozen=True)
class _Growth:
    basis: Tensor  # orthonormal rows to add to the sketch
    ratio: float  # estimated residual variance after adding them, relative to now


def _sketch_growth(products: Tensor, q: Tensor, room: int, dtype: torch.dtype) -> _Growth | None:
    """The directions a pilot's products would add to the sketch, and what they would capture.

    Two thirds of the products form the candidate basis; the other third, independent of it,
    measures the share of residual energy it leaves (``||P' P Y||^2 / ||P Y||^2``).
    """
    held = len(products) // 3
    cand = products[: len(products) - held][: max(room, 0)]
    if held == 0 or len(cand) == 0:
        return None
    basis = _orthonormal_complement(cand, q, dtype)
    if len(basis) == 0:
        return None
    return _Growth(basis, _capture_ratio(products[len(products) - held :], q, basis))


def _growth_pays(add: _Growth, needed: int, pilot_size: int, left: int) -> bool:
    """Whether growing the sketch saves products: its directions' products and a new pilot,
    against the fresh probes the residual variance would then need.

    With a reachable target, compare the products to reach it either way; when the budget binds,
    compare the variances the fresh probes it still buys would give.
    """
    fresh_after = left - len(add.basis) - pilot_size
    if fresh_after < pilot_size:
        return False
    if left >= needed:
        grown = len(add.basis) + pilot_size + max(pilot_size, math.ceil(needed * add.ratio))
        return grown < max(needed, pilot_size)
    return add.ratio * left < fresh_after


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
    min_probes: int = 40,
    max_sketch: int = 200,
    confidence: float = 0.95,
    on_step: Callable[[int], None] | None = None,
) -> TraceEstimate:
    """Adaptive Hutch++ with a calibrated interval (see the module notes).

    Args:
        matmat: ``V -> V H`` for a block of row vectors (``H`` symmetric, ``n x n``).
        n: dimension; generator, dtype, device: of the probes.
        rtol: target ``stderr / |value|`` (0: spend the budget).
        max_matvec: product budget. block: probes per product call.
        min_probes: pilot size of every stage, and fewest fresh probes (at least 2).
        max_sketch: largest sketch (0: Hutchinson).
        confidence: nominal coverage of ``interval``.
        on_step: called with the products used so far after every call.
    """
    pilot_size = max(2, int(min_probes))
    sampler = _Sampler(matmat, n, generator, dtype, device, max_matvec, block, on_step)
    q = torch.zeros(0, n, dtype=dtype, device=device)
    hq = torch.zeros(0, n, dtype=dtype, device=device)
    qhq = torch.zeros(0, 0, dtype=dtype, device=device)
    discarded = 0
    while True:
        # Pilot of this stage: its variance fixes the sketch decision and the stage's length.
        samples: list[Tensor] = []
        products: list[Tensor] = []
        while sum(map(len, samples)) < pilot_size and sampler.left() > 0:
            z, hz = sampler.probes(pilot_size - sum(map(len, samples)))
            samples.append(_residual_samples(z, hz, q, qhq))
            products.append(hz)
        pilot = torch.cat(samples).numpy()
        low = float(torch.trace(qhq).double())
        if len(pilot) < 2:
            sd, needed = math.inf, 2**62
            break
        sd = float(pilot.std(ddof=1))
        needed = _probes_needed(low + float(pilot.mean()), sd, len(pilot), rtol)
        add = _sketch_growth(torch.cat(products), q, min(max_sketch, n) - len(q), dtype)
        if add is None or not _growth_pays(add, needed, pilot_size, sampler.left()):
            break
        # The pilot's products join the sketch; its probes (measured against the old sketch)
        # leave the estimate, and the next stage starts a fresh pilot.
        q, hq = torch.cat([q, add.basis]), torch.cat([hq, sampler.products(add.basis)])
        qhq = q @ hq.T
        qhq = (qhq + qhq.T) / 2
        discarded += len(pilot)
    # Second stage: fresh probes, as many as the pilot asked for (at least a pilot's worth, at
    # most what the budget allows), and the estimate uses them alone. Only when the budget ended
    # within the pilot is the pilot all there is.
    fresh: list[Tensor] = []
    target = min(max(needed, pilot_size), sampler.left())
    while sum(map(len, fresh)) < target:
        z, hz = sampler.probes(target - sum(map(len, fresh)))
        fresh.append(_residual_samples(z, hz, q, qhq))
    values = torch.cat(fresh).numpy() if fresh else pilot
    value = low + float(values.mean())
    df = len(values) - 1
    stderr = float(values.std(ddof=1)) / math.sqrt(len(values)) if df > 0 else math.inf
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * stderr if df > 0 else math.inf
    return TraceEstimate(
        value=value,
        stderr=stderr,
        df=df,
        interval=(value - half, value + half),
        confidence=confidence,
        n_matvec=sampler.used,
        n_probes=len(values),
        n_discarded=discarded,
        sketch_size=len(q),
        low_rank=low,
        converged=stderr <= rtol * abs(value),
    )


@dataclass(frozen=True)
class Trace(ResultMixin):
    """The Hessian trace from :func:`hessian_trace`.

    Attributes:
        value: the estimate of ``tr(H)``.
        stderr: its standard error: the standard deviation of the fresh residual probes
            ``z^T P H P z`` over the square root of their number (Hutchinson: ``P = I``). The
            part of the trace in the sketch is exact, so only the remainder is random.
        df: degrees of freedom of ``stderr`` (fresh probes minus one).
        interval: the ``confidence`` interval ``value -+ t_df * stderr`` (Stein's two-stage
            interval; its coverage is tested over thousands of seeds, see the module notes).
        confidence: its nominal coverage (0.95).
        n_hvp: Hessian-vector products used (sketch and discarded pilots included).
        method: ``"hutch++"`` or ``"hutchinson"``.
        rtol: requested relative standard error.
        converged: ``stderr <= rtol * |value|`` was reached within ``max_hvp`` (the pilot
            plans with an 80% upper bound on the deviation, so most runs that can reach it do).
        n_probes: residual probes behind ``value``; ``n_discarded``: probes of earlier sketch
            stages, spent on deciding the sketch.
        sketch_size: rank of the exact low-rank part (Hutch++; 0 when deflation would not pay).
        low_rank: its trace ``tr(Q^T H Q)``.
        max_hvp, min_probes, seed: the settings used.
        problem: the Hessian analysed.
        definition: the measure's versioned definition (``landscape.core.definitions``).
    """

    value: float
    stderr: float
    df: int
    interval: tuple[float, float]
    confidence: float
    n_hvp: int
    method: str
    rtol: float
    converged: bool
    n_probes: int
    n_discarded: int
    sketch_size: int
    low_rank: float
    max_hvp: int
    min_probes: int
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
    min_probes: int = 40,
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
    pass. A pilot of ``min_probes`` probes fixes how many probes reach ``stderr <= rtol * |value|``
    (Stein's two-stage rule), and that many are drawn, or as many as ``max_hvp`` allows. See
    :mod:`landscape.curvature.trace` for the estimators and :class:`Trace` for the interval.

    Args:
        model, loss_fn, data, include, exclude, device, dtype, distributed: as for
            :func:`~landscape.curvature.eigenvalues.top_eigenvalues`.
        method: ``"hutch++"`` or ``"hutchinson"``.
        rtol: target relative standard error (0: spend the whole budget).
        max_hvp: Hessian-vector product budget.
        block: probes per data pass.
        min_probes: pilot probes per stage, and fewest fresh probes behind the estimate.
        seed: seed of the probes.
        show_progress: show a progress bar on stderr (rank 0 only when distributed).

    Returns:
        A :class:`Trace`.
    """
    if method not in ("hutch++", "hutchinson"):
        raise LandscapeError(f"method must be 'hutch++' or 'hutchinson', not {method!r}")
    if rtol < 0 or max_hvp < 2 or block < 1 or min_probes < 2:
        raise LandscapeError(
            "rtol must be non-negative, max_hvp and min_probes at least 2 and block positive"
        )
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
        df=est.df,
        interval=est.interval,
        confidence=est.confidence,
        n_hvp=op.n_hvp - used,
        method=method,
        rtol=rtol,
        converged=est.converged,
        n_probes=est.n_probes,
        n_discarded=est.n_discarded,
        sketch_size=est.sketch_size,
        low_rank=est.low_rank,
        max_hvp=max_hvp,
        min_probes=min_probes,
        seed=seed,
        problem=op.info,
    )
