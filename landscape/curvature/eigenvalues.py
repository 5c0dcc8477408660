"""Curvature of the dataset loss: extreme Hessian eigenvalues, trace and spectral density.

Every function takes ``(model, loss_fn, data)`` (or a ready :class:`HessianOperator` as ``model``,
to share its data and autograd graph between analyses), analyses the Hessian of the sample-weighted
mean loss over all batches with respect to the trainable parameters (or those a glob filter keeps),
and returns a frozen dataclass recording the settings, the products used and the accuracy reached.
Eigenvalues are in loss units per squared parameter unit; traces in loss units (a sum over
parameter directions); densities in inverse eigenvalue units.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape.core.common import Batch, LandscapeError, ResultMixin, progress
from landscape.curvature.density import broaden, default_sigma, density_grid, quadrature_moment
from landscape.curvature.lanczos import WHICH, extreme_eigenpairs, lanczos_quadrature
from landscape.curvature.products import HessianOperator, LossFn, ProblemInfo, gaussian, rademacher
from landscape.curvature.trace import hutchinson, hutchpp

#: Memory the Lanczos bases of one SLQ block may take; more runs are done in several blocks.
SLQ_BASIS_BYTES = 2 * 2**30


def _operator(
    model: nn.Module | HessianOperator,
    loss_fn: LossFn | None,
    data: Iterable[Batch] | None,
    **kwargs: Any,
) -> HessianOperator:
    if isinstance(model, HessianOperator):
        if loss_fn is not None or data is not None:
            raise LandscapeError(
                "pass either a HessianOperator or (model, loss_fn, data), not both"
            )
        return model
    if loss_fn is None or data is None:
        raise LandscapeError("loss_fn and data are required when model is a network")
    return HessianOperator(model, loss_fn, data, **kwargs)


def _is_rank0() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


@dataclass(frozen=True)
class Spectrum(ResultMixin):
    """Extreme eigenvalues of the Hessian from :func:`top_eigenvalues`.

    Attributes:
        values: eigenvalues in decreasing order (``k``, or ``2 k`` for ``which="both"``).
        residuals: ``||H y - value * y||`` of each unit Ritz vector ``y``.
        error_bounds: bound on ``|value - eigenvalue|``: the residual (rigorous), or the residual
            squared over the gap to the other Ritz values where that gap exceeds the residual
            (:func:`landscape.curvature.lanczos.error_bounds`).
        converged: ``error_bound <= tol * |value|`` (plus a rounding floor) for each value.
        n_hvp: Hessian-vector products used.
        n_restarts: thick restarts of the Lanczos basis.
        k, which, tol, max_iter, basis_size, seed: the settings used.
        problem: the Hessian analysed (parameters, samples, dtype, device, ...).
        vectors: ``(len(values), n_params)`` unit eigenvectors on the CPU when requested (not in
            ``to_dict``; :meth:`HessianOperator.vector_dict` reshapes one into parameters).
    """

    values: np.ndarray
    residuals: np.ndarray
    error_bounds: np.ndarray
    converged: np.ndarray
    n_hvp: int
    n_restarts: int
    k: int
    which: str
    tol: float
    max_iter: int
    basis_size: int | None
    seed: int
    problem: ProblemInfo
    vectors: Tensor | None = None

    def to_dict(self, include_vectors: bool = False) -> dict[str, Any]:
        """Plain values; eigenvectors only on request (they are ``n_params`` numbers each)."""
        out = super().to_dict()
        if not include_vectors:
            out.pop("vectors")
        return out


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


@dataclass(frozen=True)
class Density(ResultMixin):
    """Eigenvalue density of the Hessian from :func:`spectral_density`.

    Attributes:
        grid: eigenvalues at which the density is evaluated (evenly spaced).
        density: the Gaussian-smoothed density on ``grid`` (1 / eigenvalue units, integral 1).
        sigma: the Gaussian width (eigenvalue units).
        sigma_rule: ``"range/n_steps"`` (see :func:`landscape.curvature.density.default_sigma`) or
            ``"given"``.
        nodes: per run, the quadrature nodes (Ritz values), increasing.
        weights: per run, the squared first components of the Ritz vectors (sum 1).
        n_hvp: Hessian-vector products used.
        n_runs, n_steps, seed: the settings used.
        problem: the Hessian analysed.
    """

    grid: np.ndarray
    density: np.ndarray
    sigma: float
    sigma_rule: str
    nodes: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]
    n_hvp: int
    n_runs: int
    n_steps: int
    seed: int
    problem: ProblemInfo

    def moment(self, p: int) -> float:
        """The SLQ estimate of ``tr(H^p) / n_params``."""
        return quadrature_moment(self.nodes, self.weights, p)


def top_eigenvalues(
    model: nn.Module | HessianOperator,
    loss_fn: LossFn | None = None,
    data: Iterable[Batch] | None = None,
    k: int = 5,
    which: str = "largest",
    tol: float = 1e-3,
    *,
    max_iter: int = 500,
    basis_size: int | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    seed: int = 0,
    return_vectors: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    distributed: bool | None = None,
    show_progress: bool = True,
) -> Spectrum:
    """Extreme eigenvalues of the Hessian of the dataset loss, to a certified relative accuracy.

    Thick-restart Lanczos with full reorthogonalisation (:func:`landscape.curvature.lanczos.extreme_eigenpairs`)
    from a seeded Gaussian start vector. It stops once every returned value has an error bound of
    at most ``tol * |value|``, never after a fixed number of steps; ``converged`` says which
    values reached it if the budget ran out first.

    Args:
        model: the network, or a :class:`HessianOperator` (then ``loss_fn`` and ``data`` are
            omitted and the filter, device, dtype and distributed arguments are ignored).
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch mean.
        data: iterable of ``(inputs, targets)`` batches.
        k: eigenvalues wanted (at each end for ``which="both"``).
        which: ``"largest"`` or ``"smallest"`` algebraic (not magnitude), or ``"both"``.
        tol: relative accuracy to certify.
        max_iter: Hessian-vector product budget.
        basis_size: Lanczos vectors kept before a thick restart (default
            ``max(2 * wanted + 20, 60)``); memory is ``basis_size * n_params`` numbers.
        include: glob patterns of parameter names to analyse (default: all trainable ones).
        exclude: glob patterns of parameter names to leave out.
        seed: seed of the start vector.
        return_vectors: also return the eigenvectors.
        device: compute device (default CUDA if available).
        dtype: compute dtype; a different one casts a copy of the model, never the model itself.
        distributed: sum the data shards of all ``torch.distributed`` ranks (default: when
            initialised).
        show_progress: show a progress bar on stderr (rank 0 only when distributed).

    Returns:
        A :class:`Spectrum`.
    """
    if which not in WHICH:
        raise LandscapeError(f"which must be one of {', '.join(WHICH)}, not {which!r}")
    if k < 1 or tol <= 0:
        raise LandscapeError("k must be at least 1 and tol positive")
    op = _operator(
        model,
        loss_fn,
        data,
        include=include,
        exclude=exclude,
        device=device,
        dtype=dtype,
        distributed=distributed,
    )
    wanted = 2 * k if which == "both" else k
    if wanted > op.n:
        raise LandscapeError(f"asked for {wanted} eigenvalues of a {op.n}-parameter Hessian")
    gen = _generator(seed)
    start, used = gaussian((op.n,), gen, op.dtype, op.device), op.n_hvp
    with progress(total=max_iter, desc="lanczos", enable=show_progress and _is_rank0()) as bar:

        def on_step(n_matvec: int, n_converged: int) -> None:
            bar.update(n_matvec - bar.n)
            bar.set_postfix(converged=f"{n_converged}/{wanted}", refresh=False)

        pairs = extreme_eigenpairs(
            op.matvec,
            start,
            k=k,
            which=which,
            tol=tol,
            max_matvec=max_iter,
            basis_size=basis_size,
            return_vectors=return_vectors,
            new_direction=lambda: gaussian((op.n,), gen, op.dtype, op.device),
            on_step=on_step,
        )
    return Spectrum(
        values=pairs.values,
        residuals=pairs.residuals,
        error_bounds=pairs.bounds,
        converged=pairs.converged,
        n_hvp=op.n_hvp - used,
        n_restarts=pairs.n_restarts,
        k=k,
        which=which,
        tol=tol,
        max_iter=max_iter,
        basis_size=basis_size,
        seed=seed,
        problem=op.info,
        vectors=None if pairs.vectors is None else pairs.vectors.cpu(),
    )


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
            :func:`top_eigenvalues`.
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
    op = _operator(
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
    with progress(total=max_hvp, desc=method, enable=show_progress and _is_rank0()) as bar:
        est = estimator(
            op.matmat,
            op.n,
            generator=_generator(seed),
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


def spectral_density(
    model: nn.Module | HessianOperator,
    loss_fn: LossFn | None = None,
    data: Iterable[Batch] | None = None,
    n_runs: int = 10,
    n_steps: int = 80,
    *,
    sigma: float | None = None,
    n_grid: int | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    distributed: bool | None = None,
    show_progress: bool = True,
) -> Density:
    """Eigenvalue density of the Hessian by stochastic Lanczos quadrature (SLQ).

    ``n_runs`` Lanczos runs of ``n_steps`` fully reorthogonalised steps from Rademacher start
    vectors (seeded), advanced together so that each step is one data pass for all runs (several
    passes when their bases would exceed ``SLQ_BASIS_BYTES``). Each run's quadrature nodes are its
    Ritz values and its weights the squared first components of its Ritz vectors; the density is
    their Gaussian-broadened average (:mod:`landscape.curvature.density`).

    Args:
        model, loss_fn, data, include, exclude, device, dtype, distributed: as for
            :func:`top_eigenvalues`.
        n_runs: start vectors.
        n_steps: Lanczos steps per run (capped at the number of parameters).
        sigma: Gaussian width in eigenvalue units (default: node range over ``n_steps``).
        n_grid: grid points (default: 5 per width, clipped to [1000, 100000]).
        seed: seed of the start vectors.
        show_progress: show a progress bar on stderr (rank 0 only when distributed).

    Returns:
        A :class:`Density`.
    """
    if n_runs < 1 or n_steps < 1:
        raise LandscapeError("n_runs and n_steps must be at least 1")
    if sigma is not None and not sigma > 0:
        raise LandscapeError(f"sigma must be positive, got {sigma}")
    op = _operator(
        model,
        loss_fn,
        data,
        include=include,
        exclude=exclude,
        device=device,
        dtype=dtype,
        distributed=distributed,
    )
    used, steps = op.n_hvp, min(n_steps, op.n)
    item = torch.finfo(op.dtype).bits // 8
    per_block = max(1, min(n_runs, SLQ_BASIS_BYTES // (steps * op.n * item)))
    gen = _generator(seed)
    rules: list[tuple[np.ndarray, np.ndarray]] = []
    with progress(total=n_runs * steps, desc="slq", enable=show_progress and _is_rank0()) as bar:
        for first in range(0, n_runs, per_block):
            starts = rademacher((min(per_block, n_runs - first), op.n), gen, op.dtype, op.device)
            done = bar.n
            rules += lanczos_quadrature(
                op.matmat, starts, steps, on_step=lambda n, done=done: bar.update(done + n - bar.n)
            )
    nodes = tuple(theta for theta, _ in rules)
    weights = tuple(tau for _, tau in rules)
    width = float(sigma) if sigma is not None else default_sigma(nodes, steps)
    grid = density_grid(nodes, width, n_grid)
    return Density(
        grid=grid,
        density=broaden(nodes, weights, width, grid),
        sigma=width,
        sigma_rule="given" if sigma is not None else "range/n_steps",
        nodes=nodes,
        weights=weights,
        n_hvp=op.n_hvp - used,
        n_runs=n_runs,
        n_steps=steps,
        seed=seed,
        problem=op.info,
    )


__all__ = [
    "Density",
    "HessianOperator",
    "ProblemInfo",
    "Spectrum",
    "Trace",
    "hessian_trace",
    "spectral_density",
    "top_eigenvalues",
]
