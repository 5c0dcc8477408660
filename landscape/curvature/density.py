"""Spectral density from quadrature rules: Gaussian broadening on a grid, and the width rule.

Stochastic Lanczos quadrature (SLQ) gives, per start vector ``v``, nodes ``theta_j`` and weights
``tau_j`` (summing to 1) with ``sum_j tau_j f(theta_j) ~ v^T f(H) v / v^T v``; averaging over random
``v`` estimates ``tr f(H) / n``. With ``f`` a Gaussian of width ``sigma`` centred at ``t`` this is
the eigenvalue density smoothed by that Gaussian (Lin, Saad and Yang, SIAM Review 2016;
Ghorbani, Krishnan and Xiao, 2019):

    phi_sigma(t) = mean over runs of sum_j tau_j * exp(-(t - theta_j)^2 / (2 sigma^2))
                   / (sigma * sqrt(2 pi)).

``phi_sigma`` has units of 1 / eigenvalue and integrates to 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from landscape.core.batches import Batch
from landscape.core.definitions import definition
from landscape.core.distributed import is_rank0
from landscape.core.errors import LandscapeError
from landscape.core.progress import progress
from landscape.core.records import ResultMixin
from landscape.curvature.lanczos import lanczos_quadrature
from landscape.curvature.products import (
    HessianOperator,
    LossFn,
    ProblemInfo,
    as_operator,
    rademacher,
    seeded_generator,
)

#: Grid margin beyond the extreme nodes, in widths: the Gaussian mass left outside is below 1e-9.
MARGIN_SIGMAS = 6.0
#: Grid points per width, so that the trapezoid rule integrates each Gaussian accurately.
POINTS_PER_SIGMA = 5
#: Memory the Lanczos bases of one SLQ block may take; more runs are done in several blocks.
SLQ_BASIS_BYTES = 2 * 2**30


def default_sigma(nodes: Sequence[np.ndarray], n_steps: int) -> float:
    """The broadening width used unless one is given: ``(max node - min node) / n_steps``.

    An ``m``-step run has ``m`` nodes spread over the spectrum's range, so it cannot resolve
    features much narrower than ``range / m``: narrower Gaussians turn single quadrature nodes into
    spikes, wider ones blur real structure (the trade-off discussed by Lin, Saad and Yang 2016).
    The width is therefore the mean node spacing of one run. When all nodes coincide, 1e-3 of
    their magnitude (or 1e-3) is used.
    """
    allnodes = np.concatenate([np.asarray(x, dtype=np.float64) for x in nodes])
    span = float(allnodes.max() - allnodes.min())
    if span > 0:
        return span / max(n_steps, 1)
    return 1e-3 * max(float(np.abs(allnodes).max()), 1.0)


def density_grid(
    nodes: Sequence[np.ndarray], sigma: float, n_grid: int | None = None
) -> np.ndarray:
    """Evenly spaced points covering every node with ``MARGIN_SIGMAS`` widths to spare.

    The default count gives ``POINTS_PER_SIGMA`` points per width, clipped to [1000, 100000].
    """
    allnodes = np.concatenate([np.asarray(x, dtype=np.float64) for x in nodes])
    lo = float(allnodes.min()) - MARGIN_SIGMAS * sigma
    hi = float(allnodes.max()) + MARGIN_SIGMAS * sigma
    if n_grid is None:
        n_grid = int(np.clip(math.ceil(POINTS_PER_SIGMA * (hi - lo) / sigma), 1000, 100_000))
    return np.linspace(lo, hi, int(n_grid))


def broaden(
    nodes: Sequence[np.ndarray], weights: Sequence[np.ndarray], sigma: float, grid: np.ndarray
) -> np.ndarray:
    """The Gaussian-smoothed density ``phi_sigma`` on ``grid``, renormalised to integrate to 1.

    Renormalisation only corrects the trapezoid rule's error (and mass beyond the grid when the
    grid is given by the caller); on the default grid the correction is below 1e-6.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    out = np.zeros_like(grid)
    for theta, tau in zip(nodes, weights, strict=True):
        z = (grid[:, None] - np.asarray(theta)[None, :]) / sigma
        out += np.exp(-0.5 * z**2) @ np.asarray(tau)
    out /= len(nodes) * sigma * math.sqrt(2 * math.pi)
    total = float(np.trapezoid(out, grid))
    return out / total if total > 0 else out


def quadrature_moment(nodes: Sequence[np.ndarray], weights: Sequence[np.ndarray], p: int) -> float:
    """Estimate of ``tr(H^p) / n``: the mean over runs of ``sum_j tau_j theta_j^p``."""
    return float(
        np.mean(
            [
                np.dot(np.asarray(tau), np.asarray(theta) ** p)
                for theta, tau in zip(nodes, weights, strict=True)
            ]
        )
    )


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
        definition: the measure's versioned definition (``landscape.core.definitions``).
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
    definition: str = definition("density")

    def moment(self, p: int) -> float:
        """The SLQ estimate of ``tr(H^p) / n_params``."""
        return quadrature_moment(self.nodes, self.weights, p)


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
            :func:`~landscape.curvature.eigenvalues.top_eigenvalues`.
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
    used, steps = op.n_hvp, min(n_steps, op.n)
    item = torch.finfo(op.dtype).bits // 8
    per_block = max(1, min(n_runs, SLQ_BASIS_BYTES // (steps * op.n * item)))
    gen = seeded_generator(seed)
    rules: list[tuple[np.ndarray, np.ndarray]] = []
    with progress(total=n_runs * steps, desc="slq", enable=show_progress and is_rank0()) as bar:
        for first in range(0, n_runs, per_block):
            starts = rademacher((min(per_block, n_runs - first), op.n), gen, op.dtype, op.device)
            done = bar.n

            def advance(n: int, done: int = done) -> None:
                bar.update(done + n - bar.n)

            rules += lanczos_quadrature(op.matmat, starts, steps, on_step=advance)
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
