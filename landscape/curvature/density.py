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
from collections.abc import Sequence

import numpy as np

#: Grid margin beyond the extreme nodes, in widths: the Gaussian mass left outside is below 1e-9.
MARGIN_SIGMAS = 6.0
#: Grid points per width, so that the trapezoid rule integrates each Gaussian accurately.
POINTS_PER_SIGMA = 5


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
