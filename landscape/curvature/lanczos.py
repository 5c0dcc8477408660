"""Lanczos iterations for symmetric operators given only as products: extremes and quadrature.

Both routines keep every basis vector and orthogonalise each new one against all of them, twice
(classical Gram-Schmidt repeated, which is as accurate as modified Gram-Schmidt and runs as two
matrix products). Without it Lanczos produces spurious copies of converged eigenvalues ("ghosts").
Basis vectors live in the operator's dtype and device; the small projected eigenproblems are solved
in float64 on the CPU.

* :func:`extreme_eigenpairs`: thick-restart Lanczos (the symmetric Krylov-Schur method of Wu and
  Simon, 2000) that stops once an error bound certifies every wanted Ritz value.
* :func:`lanczos_quadrature`: several plain Lanczos runs advanced in lockstep, one block product per
  step, returning the Gauss quadrature nodes and weights of each start vector (for SLQ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]
WHICH = ("largest", "smallest", "both")
TOL_SCALES = ("value", "spectrum")


def breakdown_level(dtype: torch.dtype) -> float:
    """Relative size below which a new Krylov direction counts as numerically zero.

    ``eps ** 0.75`` sits well above the rounding noise of an exact invariant subspace (about
    ``eps`` times the operator norm) and well below any genuine coupling worth following.
    """
    return float(torch.finfo(dtype).eps) ** 0.75


def _orthogonalise(w: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """``w`` minus its projection on the orthonormal rows of ``basis``, and the coefficients."""
    coef = basis @ w
    w = w - coef @ basis
    again = basis @ w
    return w - again @ basis, coef + again


@dataclass(frozen=True)
class RitzPairs:
    """Converged (or last) Ritz pairs of :func:`extreme_eigenpairs`.

    Attributes:
        values: Ritz values, sorted in decreasing order, float64.
        residuals: ``||H y - theta y||`` of each unit Ritz vector ``y`` (``|beta * s_last|``).
        bounds: certified bounds: ``residual + product_error``. Each ``theta +- bound`` holds an
            eigenvalue of ``H`` (Krylov-Weinstein, widened by the error of the products).
        estimated: ``min(residual, residual**2 / gap) + product_error``, the sharper Kato-Temple
            bound with the gap taken from the other Ritz values: an estimate, false when an
            eigenvalue near ``theta`` has not yet entered the Krylov space.
        converged: ``residual <= tol * |value| + product_error``: the value is certified to
            ``tol`` relative, or to what the products resolve where that is coarser (an
            eigenvalue 0 of a null space has no relative accuracy).
        vectors: ``(k, n)`` unit Ritz vectors in the operator dtype, or ``None``.
        n_matvec: products used (the repeated first product included).
        n_restarts: thick restarts made.
        product_error: measured error of one product of a unit vector, the larger of the
            difference between two products of the same vector and the symmetry defect
            ``|u^T H v - v^T H u|`` of the first two basis vectors times ``sqrt(n)`` (the defect
            sees one direction of the error), and at least ``eps * max |theta|``.
        krylov_steps: the dimension ``s`` of the basis when it is one Krylov space of the start
            vector (no thick restart and no fresh direction): then Kuczynski-Wozniakowski's
            bound for Lanczos from a random start applies to these Ritz values. ``None`` else.
    """

    values: np.ndarray
    residuals: np.ndarray
    bounds: np.ndarray
    estimated: np.ndarray
    converged: np.ndarray
    vectors: Tensor | None
    n_matvec: int
    n_restarts: int
    product_error: float
    krylov_steps: int | None = None


def wanted_order(theta: np.ndarray, which: str) -> np.ndarray:
    """Indices of ``theta`` from most to least wanted (both ends alternate for ``"both"``)."""
    up = np.argsort(theta, kind="stable")
    if which == "largest":
        return up[::-1]
    if which == "smallest":
        return up
    down = up[::-1]
    order = np.empty_like(up)
    order[0::2], order[1::2] = down[: (len(up) + 1) // 2], up[: len(up) // 2]
    return order


def error_bounds(theta: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Estimated eigenvalue error bounds for Ritz values ``theta`` with residuals ``residuals``.

    Each interval ``theta_i +- r_i`` holds an eigenvalue (Krylov-Weinstein); where the gap from
    ``theta_i`` to every other Ritz interval is larger than ``r_i``, the sharper ``r_i**2 / gap``
    applies (Kato-Temple; see Parlett, The Symmetric Eigenvalue Problem). The gap is taken from
    the Ritz values, so the sharper bound is an *estimate*: it is false when an eigenvalue closer
    to ``theta_i`` has not yet entered the Krylov space (clustered tops), and is never used to
    stop.
    """
    if len(theta) == 1:
        return residuals.copy()
    dist = np.abs(theta[:, None] - theta[None, :]) - residuals[None, :]
    np.fill_diagonal(dist, np.inf)
    gap = dist.min(axis=1)
    sharp = np.where(gap > residuals, residuals**2 / np.maximum(gap, 1e-300), np.inf)
    return np.minimum(residuals, sharp)


def extreme_eigenpairs(
    matvec: MatVec,
    v0: Tensor,
    *,
    k: int,
    which: str = "largest",
    tol: float = 1e-3,
    max_matvec: int = 1000,
    basis_size: int | None = None,
    basis_device: torch.device | str | None = None,
    return_vectors: bool = False,
    new_direction: Callable[[], Tensor] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    tol_scale: str = "value",
    min_matvec: int = 0,
) -> RitzPairs:
    """The ``k`` largest, smallest or both-end eigenvalues of a symmetric operator.

    Thick-restart Lanczos: when the basis holds ``basis_size`` vectors, it is compressed to the
    wanted Ritz vectors plus the nearest others (half of the free space) and the iteration goes on
    from the last residual, which keeps the Krylov space and memory bounded. Iteration stops when
    every wanted Ritz value has ``residual <= tol * |value| + product_error`` (Krylov-Weinstein:
    an eigenvalue lies within ``residual + product_error``), when the basis spans the whole
    space, or after ``max_matvec`` products. ``product_error`` is measured (see :class:`RitzPairs`), so a target
    finer than the products carry is reported as not converged rather than certified. Ritz
    values of the top end are lower bounds of the top eigenvalues; no test here proves that an
    eigenvalue was not missed altogether.

    Args:
        matvec: ``v -> H v`` on flat vectors.
        v0: start vector (any norm), in the dtype and device of the products.
        k: eigenvalues wanted at each requested end.
        which: ``"largest"`` / ``"smallest"`` algebraic, or ``"both"`` (``k`` at each end).
        tol: relative accuracy to certify.
        tol_scale: what ``tol`` is relative to: ``"value"`` (each Ritz value's own magnitude)
            or ``"spectrum"`` (the largest Ritz magnitude, the operator's scale: a value near 0
            is then certified to ``tol`` times the spectrum's width instead of to digits that
            mean nothing beside it).
        max_matvec: product budget.
        basis_size: most basis vectors kept (default ``max(2 * wanted + 20, 60)``).
        basis_device: where the basis lives (default: with ``v0``). ``"cpu"`` keeps the
            ``basis_size * n`` numbers in host memory when the accelerator is small: each product
            input goes to ``v0``'s device and its result comes back for orthogonalisation.
        return_vectors: also form the Ritz vectors.
        new_direction: draws a random vector, used to continue after an invariant subspace; the
            iteration stops there when it is ``None``.
        on_step: called as ``on_step(n_matvec, n_converged)`` after every product.
        min_matvec: products to make before stopping on convergence (to grow the Krylov space
            for a bound that needs ``s`` steps; see :attr:`RitzPairs.krylov_steps`).

    Returns:
        The wanted Ritz pairs, values in decreasing order.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, not {which!r}")
    if tol_scale not in TOL_SCALES:
        raise ValueError(f"tol_scale must be one of {', '.join(TOL_SCALES)}, not {tol_scale!r}")
    n = v0.numel()
    wanted = min(n, 2 * k if which == "both" else k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    m_max = min(n, basis_size or max(2 * wanted + 20, 60))
    if m_max < min(n, wanted + 2):
        raise ValueError(f"basis_size must be at least wanted + 2 = {wanted + 2}")
    home = v0.device
    store = torch.device(basis_device) if basis_device is not None else home
    # Rows are written before they are read; untouched host pages never become resident.
    basis = torch.empty(m_max, n, dtype=v0.dtype, device=store)
    basis[0] = (v0 / torch.linalg.vector_norm(v0)).to(store)

    def product(v: Tensor) -> Tensor:
        return matvec(v.to(home)).to(store)

    proj = np.zeros((m_max, m_max))
    level = breakdown_level(v0.dtype)
    eps = float(torch.finfo(v0.dtype).eps)
    j, n_matvec, n_restarts, n_fresh = 0, 0, 0, 0
    # The product error is measured: twice the same product, and the symmetry defect below.
    first = product(basis[0])
    repeat_error = float(torch.linalg.vector_norm(product(basis[0]) - first))
    n_matvec, defect, beta0 = 1, 0.0, None
    while True:
        w, coef = _orthogonalise(first if j == 0 else product(basis[j]), basis[: j + 1])
        n_matvec += 1
        col = coef.double().cpu().numpy()
        if j == 1 and n_restarts == 0 and beta0 is not None:
            # u^T H v against v^T H u for u, v = basis[0], basis[1]: the latter is beta_0.
            defect = abs(col[0] - beta0)
        proj[: j + 1, j] = col
        proj[j, : j + 1] = col
        beta = float(torch.linalg.vector_norm(w))
        if j == 0:
            beta0 = beta
        theta, s = np.linalg.eigh(proj[: j + 1, : j + 1])
        scale = float(np.abs(theta).max())
        product_error = max(repeat_error, defect * math.sqrt(n), eps * scale)
        residuals = beta * np.abs(s[-1])
        bounds = residuals + product_error
        order = wanted_order(theta, which)[:wanted]
        reference = np.abs(theta) if tol_scale == "value" else np.full_like(theta, scale)
        ok = residuals[order] <= tol * reference[order] + product_error
        done = j + 1 >= wanted and bool(ok.all()) and n_matvec >= min_matvec
        if on_step is not None:
            on_step(n_matvec, int(ok.sum()))
        if done or j + 1 == n or n_matvec >= max_matvec:
            break
        if beta <= level * max(scale, 1e-300):
            if new_direction is None:
                break
            # Invariant subspace: the rest of the spectrum is orthogonal to it, so go on from a
            # fresh random direction with no coupling to the current basis.
            w, _ = _orthogonalise(new_direction().to(w), basis[: j + 1])
            beta_next, beta = float(torch.linalg.vector_norm(w)), 0.0
            n_fresh += 1
        else:
            beta_next = beta
        if j + 1 < m_max:
            basis[j + 1] = w / beta_next
            j += 1
            continue
        # Thick restart: keep the most wanted Ritz vectors, couple them to the residual.
        keep = wanted_order(theta, which)[: max(wanted, min(m_max - 1, (m_max + wanted) // 2))]
        s_keep = torch.from_numpy(s[:, keep]).to(basis)
        basis[: len(keep)] = s_keep.T @ basis[: j + 1]
        basis[len(keep)] = w / beta_next
        proj[:] = 0.0
        proj[range(len(keep)), range(len(keep))] = theta[keep]
        proj[len(keep), : len(keep)] = beta * s[-1, keep]
        proj[: len(keep), len(keep)] = beta * s[-1, keep]
        j = len(keep)
        n_restarts += 1
    pick = order[np.argsort(-theta[order], kind="stable")]
    vectors = None
    if return_vectors:
        vectors = (torch.from_numpy(s[:, pick]).to(basis).T @ basis[: j + 1]).to(home)
    return RitzPairs(
        values=theta[pick],
        residuals=residuals[pick],
        bounds=bounds[pick],
        estimated=error_bounds(theta, residuals)[pick] + product_error,
        converged=residuals[pick] <= tol * reference[pick] + product_error,
        vectors=vectors,
        n_matvec=n_matvec,
        n_restarts=n_restarts,
        product_error=product_error,
        krylov_steps=j + 1 if n_restarts == 0 and n_fresh == 0 else None,
    )


def lanczos_quadrature(
    matmat: Callable[[Tensor], Tensor],
    starts: Tensor,
    n_steps: int,
    on_step: Callable[[int], None] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Gauss quadrature rules of ``v -> v^T f(H) v / v^T v`` for each start vector ``v``.

    Runs ``n_steps`` Lanczos steps from every row of ``starts`` in lockstep (one ``matmat`` of the
    still-active runs per step), each fully reorthogonalised against its own basis. The rule of a
    run is the eigen-decomposition ``T = S diag(theta) S^T`` of its tridiagonal matrix: nodes
    ``theta`` and weights ``S[0, :]**2`` (the squared first components, summing to 1). It is exact
    for polynomials ``f`` of degree up to ``2 * steps - 1``; a run that reaches an invariant
    subspace stops early with the exact eigenvalues it contains as nodes.

    Args:
        matmat: ``(r, n) -> (r, n)`` row-wise products.
        starts: ``(r, n)`` start vectors (any norms).
        n_steps: Lanczos steps per run (at most ``n``).
        on_step: called with the number of products used after each step.

    Returns:
        One ``(nodes, weights)`` pair of float64 arrays per run, nodes increasing.
    """
    r, n = starts.shape
    m = min(n_steps, n)
    basis = torch.zeros(r, m, n, dtype=starts.dtype, device=starts.device)
    basis[:, 0] = starts / torch.linalg.vector_norm(starts, dim=1, keepdim=True)
    alphas, betas = np.zeros((r, m)), np.zeros((r, m))
    length = np.full(r, m)
    active = np.arange(r)
    level = breakdown_level(starts.dtype)
    used = 0
    for j in range(m):
        full = len(active) == r  # slicing keeps a view; fancy indexing would copy the basis
        rows = torch.from_numpy(active).to(basis.device)
        own = basis[:, : j + 1] if full else basis[rows, : j + 1]
        w = matmat(own[:, j])
        used += len(active)
        for _ in range(2):  # twice, as in _orthogonalise
            coef = torch.einsum("rjn,rn->rj", own, w)
            w = w - torch.einsum("rj,rjn->rn", coef, own)
            alphas[active, j] += coef[:, j].double().cpu().numpy()
        beta = torch.linalg.vector_norm(w, dim=1).double().cpu().numpy()
        betas[active, j] = beta
        if on_step is not None:
            on_step(used)
        if j + 1 == m:
            break
        scale = np.maximum(
            np.abs(alphas[active, : j + 1]).max(axis=1), betas[active, : j + 1].max(axis=1)
        )
        alive = beta > level * np.maximum(scale, 1e-300)
        length[active[~alive]] = j + 1
        keep = torch.from_numpy(alive).to(basis.device)
        basis[rows[keep], j + 1] = w[keep] / torch.from_numpy(beta[alive]).to(w).unsqueeze(1)
        active = active[alive]
        if len(active) == 0:
            break
    rules = []
    for i in range(r):
        steps = int(length[i])
        tri = np.diag(alphas[i, :steps])
        off = betas[i, : steps - 1]
        tri += np.diag(off, 1) + np.diag(off, -1)
        theta, s = np.linalg.eigh(tri)
        rules.append((theta, s[0] ** 2))
    return rules
