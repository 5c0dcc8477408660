"""Checks that no eigenvalue beyond the returned ones was missed: a search orthogonal to them.

A converged Ritz value is certified to lie near *an* eigenvalue (Krylov-Weinstein), not to be the
k-th largest: an eigenvalue the Krylov space never saw (a cluster member, a second copy of a
multiple eigenvalue) goes unnoticed. After the main solve, :func:`search_complement` runs plain
Lanczos from a fresh random start on the deflated operator ``P H P``, ``P = I - Y Y^T`` with ``Y``
the returned (locked) vectors. Whatever it finds beyond the k-th returned value is solved to the
same tolerance and merged by :func:`merge_pairs`; the search repeats until it finds nothing.

Its Krylov space, ``s`` steps from a start uniform on the sphere of ``Y``'s complement, also
gives a probabilistic bound (Kuczynski and Wozniakowski 1992, Theorem 4.2, applied to the shifted
operator): with probability at least ``1 - delta``, ``(mu - rho_1) <= eps (mu - mu_min)`` where
``mu`` and ``mu_min`` are the largest and smallest eigenvalues of ``H`` on the complement,
``rho_1`` the search's top Ritz value and ``eps = (ln(1.648 sqrt(n) / delta) / (2 s - 1))^2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from landscape.curvature.lanczos import MatVec, RitzPairs, extreme_eigenpairs, wanted_order


def kw_epsilon(n: int, steps: int, delta: float) -> float:
    """The ``eps`` of the Kuczynski-Wozniakowski Lanczos bound for ``steps`` steps on an
    ``n``-dimensional operator at failure probability ``delta`` (capped at 1: no information)."""
    if steps < 1:
        return 1.0
    return min(1.0, (math.log(1.648 * math.sqrt(n) / delta) / (2 * steps - 1)) ** 2)


def _kw_epsilon_log(n: int, steps: int, log_delta: float) -> float:
    """:func:`kw_epsilon` with ``delta`` given by its logarithm (tiny deltas do not underflow)."""
    if steps < 1:
        return 1.0
    return min(1.0, ((math.log(1.648 * math.sqrt(n)) - log_delta) / (2 * steps - 1)) ** 2)


@dataclass(frozen=True)
class StepSpread:
    """How the failure probability ``delta`` of a Lanczos run whose length is decided while it
    runs (it stops on convergence, at a step ``s >= first``) is spread over the steps it may stop
    at: ``delta (1 - ratio) ratio^(s - first)`` at step ``s``. These sum to ``delta``, so by the
    union bound the Kuczynski-Wozniakowski bound holds at whichever step the run stopped.

    With ``ratio = exp(-2 sqrt(eps))`` each further step tightens the bound exactly as fast as
    its share of ``delta`` shrinks, so a bound of ``eps`` at ``first`` stays ``eps`` or tighter at
    every later step.
    """

    first: int
    ratio: float

    def epsilon(self, n: int, steps: int, delta: float) -> float:
        """The bound's ``eps`` at ``steps`` (1, no information, before ``first``)."""
        if steps < self.first:
            return 1.0
        log_delta = (
            math.log(delta) + math.log1p(-self.ratio) + (steps - self.first) * math.log(self.ratio)
        )
        return _kw_epsilon_log(n, steps, log_delta)


def spread_for(n: int, eps: float, delta: float, cap: int) -> StepSpread:
    """The geometric :class:`StepSpread` whose bound reaches ``eps`` at the fewest steps (at most
    ``cap``) and stays there at every later step."""
    ratio = math.exp(-2 * math.sqrt(eps))
    first = 1
    while first < cap and StepSpread(first, ratio).epsilon(n, first, delta) > eps:
        first += 1
    return StepSpread(first, ratio)


def solve_as_search(
    pairs: RitzPairs, n: int, delta: float, spread: StepSpread
) -> ComplementSearch | None:
    """The bound a solve's own Krylov space gives (``None`` when it restarted): for ``k = 1``
    there is nothing to be orthogonal to, so a plain Lanczos run from a uniformly random start
    *is* the search of :func:`search_complement`, on the whole operator. ``spread``: how
    ``delta`` was spread over the steps the solve could stop at (fixed before it ran)."""
    if pairs.krylov_steps is None:
        return None
    steps = pairs.krylov_steps
    return ComplementSearch(
        steps=steps,
        top=float(pairs.values[0]),
        bottom=float(pairs.values[-1]),
        eps=spread.epsilon(n, steps, delta),
        delta=float(delta),
        n_matvec=0,
        source="solve",
        spread_from=spread.first,
        spread_ratio=spread.ratio,
    )


def complement_projector(locked: Tensor) -> Callable[[Tensor], Tensor]:
    """``v -> P v`` with ``P = I - Q Q^T``, ``Q`` an orthonormal basis of ``locked``'s rows."""
    q = torch.linalg.qr(locked.T).Q.T  # (k, n), orthonormal rows
    return lambda v: v - (q @ v) @ q


def deflated(matvec: MatVec, locked: Tensor) -> MatVec:
    """``v -> P H P v`` (:func:`complement_projector`)."""
    project = complement_projector(locked)
    return lambda v: project(matvec(project(v)))


@dataclass(frozen=True)
class ComplementSearch:
    """One search orthogonal to the locked vectors.

    Attributes:
        steps: Lanczos steps (the Krylov dimension; the first product is repeated once more to
            measure the product error).
        top, bottom: the search's extreme Ritz values (lower bound of the complement's largest
            eigenvalue, upper bound of its smallest).
        eps, delta: the Kuczynski-Wozniakowski bound: with probability ``>= 1 - delta`` the
            complement's largest eigenvalue is at most ``top + eps / (1 - eps) * (top - low)``
            for any lower bound ``low`` of its smallest (likewise at the bottom end).
        n_matvec: products used (0 when the solve was its own search).
        source: ``"search"`` (a run orthogonal to the returned vectors) or ``"solve"`` (for
            ``k = 1``, the main solve's own Krylov space: :func:`solve_as_search`).
        spread_from, spread_ratio: ``"solve"``: the :class:`StepSpread` of ``delta`` over the
            steps the solve could stop at (0 for a search of fixed length).
    """

    steps: int
    top: float
    bottom: float
    eps: float
    delta: float
    n_matvec: int
    source: str = "search"
    spread_from: int = 0
    spread_ratio: float = 0.0


def search_complement(
    matvec: MatVec,
    locked: Tensor,
    start: Tensor,
    *,
    steps: int,
    delta: float,
) -> ComplementSearch:
    """Plain Lanczos (no restart) for ``steps`` steps on ``P H P`` from ``P start``."""
    op = deflated(matvec, locked)
    v0 = complement_projector(locked)(start)
    n = start.numel() - locked.shape[0]
    steps = max(1, min(steps, n))
    pairs = extreme_eigenpairs(
        op,
        v0,
        k=1,
        which="both" if n >= 2 else "largest",
        tol=0.0,
        max_matvec=steps + 1,
        basis_size=max(steps + 1, 4),
    )
    krylov = pairs.n_matvec - 1  # the first product is made twice
    return ComplementSearch(
        steps=krylov,
        top=float(pairs.values[0]),
        bottom=float(pairs.values[-1]),
        eps=kw_epsilon(n, krylov, delta),
        delta=float(delta),
        n_matvec=pairs.n_matvec,
    )


def beyond(search: ComplementSearch, kept: RitzPairs, which: str) -> bool:
    """Whether the search found a value beyond the least wanted kept value at a wanted end."""
    values, bounds = kept.values, kept.bounds
    if which == "largest":
        return search.top > values[-1] + bounds[-1]
    if which == "smallest":
        return search.bottom < values[-1] - bounds[-1]
    half = len(values) // 2
    top_k, bottom_k = values[half - 1], values[half]
    return bool(search.top > top_k + bounds[half - 1] or search.bottom < bottom_k - bounds[half])


def merge_pairs(kept: RitzPairs, found: RitzPairs, k: int, which: str) -> tuple[RitzPairs, int]:
    """The ``k`` most wanted (per end) of ``kept`` and ``found``, with certified bounds.

    ``found`` are Ritz pairs of ``P H P`` with vectors orthogonal to ``kept``'s; in ``H`` their
    residuals grow by at most ``||Y^T H z|| <= ||R_Y||_F`` (the kept residuals' root sum of
    squares), which is added to their bounds. Also returns how many of ``found`` were kept.
    """
    leak = float(np.sqrt(np.sum(kept.residuals**2)))
    values = np.concatenate([kept.values, found.values])
    residuals = np.concatenate([kept.residuals, found.residuals + leak])
    error = max(kept.product_error, found.product_error)
    assert kept.vectors is not None and found.vectors is not None  # solved with vectors
    vectors = torch.cat([kept.vectors, found.vectors])
    wanted = 2 * k if which == "both" else k
    order = wanted_order(values, which)[:wanted]
    pick = order[np.argsort(-values[order], kind="stable")]
    converged = np.concatenate([kept.converged, found.converged])
    merged = RitzPairs(
        values=values[pick],
        residuals=residuals[pick],
        bounds=residuals[pick] + error,
        estimated=residuals[pick] + error,
        converged=converged[pick],
        vectors=vectors[pick],
        n_matvec=kept.n_matvec + found.n_matvec,
        n_restarts=kept.n_restarts + found.n_restarts,
        product_error=error,
    )
    return merged, int(np.sum(pick >= len(kept.values)))


def certified_solve(
    solve: Callable[[MatVec, Tensor], RitzPairs],
    matvec: MatVec,
    draw: Callable[[], Tensor],
    *,
    k: int,
    which: str,
    steps: int,
    delta: float,
    max_rounds: int = 4,
) -> tuple[RitzPairs, ComplementSearch, int]:
    """``solve`` (the main solve, with vectors), then searches orthogonal to the locked vectors,
    merging what they find, until a search finds nothing beyond the kept values.

    Returns the pairs, the last search and the number of eigenvalues the searches added.
    """
    kept = solve(matvec, draw())
    locked = kept.vectors
    assert locked is not None  # ``solve`` returns vectors
    added = 0
    for _ in range(max_rounds):
        search = search_complement(matvec, locked, draw(), steps=steps, delta=delta)
        extra = search.n_matvec
        if not beyond(search, kept, which):
            break
        found = solve(deflated(matvec, locked), complement_projector(locked)(draw()))
        merged, n_new = merge_pairs(kept, found, k, which)
        added += n_new
        assert found.vectors is not None
        locked = torch.cat([locked, found.vectors])
        kept = _with_matvec(merged, merged.n_matvec + extra)
    else:
        search = search_complement(matvec, locked, draw(), steps=steps, delta=delta)
    return _with_matvec(kept, kept.n_matvec + search.n_matvec), search, added


def _with_matvec(pairs: RitzPairs, n_matvec: int) -> RitzPairs:
    return replace(pairs, n_matvec=n_matvec)
