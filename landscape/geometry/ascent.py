"""Auto-PGD: projected gradient ascent with momentum and step-size halving (Croce & Hein 2020).

The maximiser of worst-case sharpness. It works in the scaled space ``u = delta / c`` of
:mod:`landscape.geometry.sharpness`, where the (possibly adaptive, ellipsoidal) ball is a plain
L2 or Linf ball of radius ``rho``, so projection is exact: rescaling (L2) or clipping (Linf).

Each iteration takes one objective-and-gradient evaluation:

* a step ``z = P(x_k + eta * s(g_k))`` with ``s(g) = g / ||g||_2`` (L2) or ``sign(g)`` (Linf);
* momentum ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))``, ``alpha = 0.75``;
* at checkpoints (22%, 41%, 57% ... of the budget) the step ``eta`` is halved, and the iterate
  reset to the best point so far, when fewer than 75% of the steps since the last checkpoint
  improved the objective, or when neither the step nor the best value changed since then.

The best value over all iterates is returned, so a longer budget can only raise it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

from landscape.geometry.weights import State, norm

NORMS = ("l2", "linf")
Objective = Callable[[State], tuple[float, State]]


@dataclasses.dataclass(frozen=True)
class AscentTrace:
    """One maximisation.

    Attributes:
        best: largest objective value seen (loss units).
        best_point: the iterate that reached it (in the scaled space).
        values: objective at every iterate, shape ``(restarts, iterations + 1)``; column 0 is
            each restart's starting point.
        step_sizes: step ``eta`` used after every iterate, same shape.
        n_evaluations: objective-and-gradient evaluations spent.
    """

    best: float
    best_point: State
    values: np.ndarray
    step_sizes: np.ndarray
    n_evaluations: int


def checkpoints(iterations: int) -> list[int]:
    """Iterations after which Auto-PGD may halve its step: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), as fractions of ``iterations``."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # The tolerance keeps float noise (0.41 * 100 = 41.000000000000004) off the ceiling.
    marks = sorted({math.ceil(q * iterations - 1e-9) for q in p[1:]})
    return [m for m in marks if 0 < m < iterations]


def project(u: State, rho: float, kind: str) -> State:
    """Euclidean projection of ``u`` onto the L2 or Linf ball of radius ``rho``."""
    if kind == "l2":
        size = norm(u)
        return {n: t * (rho / size) for n, t in u.items()} if size > rho else u
    return {n: t.clamp(-rho, rho) for n, t in u.items()}


def _direction(g: State, kind: str) -> State:
    if kind == "l2":
        size = norm(g)
        return {n: t / size if size > 0 else torch.zeros_like(t) for n, t in g.items()}
    return {n: t.sign() for n, t in g.items()}


def random_start(like: State, rho: float, kind: str, generator: torch.Generator) -> State:
    """A seeded random point: uniform on the L2 sphere of radius ``rho``, or in the Linf box."""
    if kind == "l2":
        z = {
            n: torch.randn(t.shape, generator=generator, dtype=torch.float64)
            for n, t in like.items()
        }
        scale = rho / norm(z)
        return {n: (z[n] * scale).to(like[n]) for n in like}
    return {
        n: ((2 * torch.rand(t.shape, generator=generator, dtype=torch.float64) - 1) * rho).to(t)
        for n, t in like.items()
    }


def auto_pgd(
    objective: Objective,
    start: State,
    rho: float,
    kind: str = "l2",
    *,
    iterations: int = 20,
    restarts: int = 1,
    seed: int = 0,
    momentum: float = 0.75,
    min_success: float = 0.75,
    on_iteration: Callable[[], None] | None = None,
) -> AscentTrace:
    """Maximise ``objective(u)`` over ``||u||_kind <= rho`` by Auto-PGD.

    Args:
        objective: returns the value and gradient at ``u`` (tensors shaped like ``start``).
        start: the first restart's starting point (usually zeros: the unperturbed weights);
            further restarts start at seeded random points (:func:`random_start`).
        rho: radius of the ball.
        kind: ``"l2"`` or ``"linf"``.
        iterations: steps per restart (each one objective evaluation; the start costs one more).
        restarts: independent ascents; the best is kept.
        seed: seed of the random restarts.
        momentum: ``alpha`` of the update (1: no momentum).
        min_success: share of improving steps below which a checkpoint halves the step.
        on_iteration: called after every evaluation (a progress bar's update).
    """
    if kind not in NORMS:
        raise ValueError(f"kind must be one of {NORMS}, not {kind!r}")
    marks = set(checkpoints(iterations))
    gen = torch.Generator().manual_seed(int(seed))
    values = np.full((restarts, iterations + 1), np.nan)
    steps = np.full((restarts, iterations + 1), np.nan)
    best, best_point = -math.inf, start
    evaluations = 0

    def evaluate(u: State) -> tuple[float, State]:
        nonlocal evaluations
        evaluations += 1
        out = objective(u)
        if on_iteration is not None:
            on_iteration()
        return out

    for r in range(restarts):
        x = project(start if r == 0 else random_start(start, rho, kind, gen), rho, kind)
        f, g = evaluate(x)
        eta = 2.0 * rho
        values[r, 0], steps[r, 0] = f, eta
        x_prev = x
        r_best, r_point, r_grad = f, x, g
        last_mark, successes = 0, 0
        eta_at_mark, best_at_mark = eta, r_best
        for k in range(iterations):
            s = _direction(g, kind)
            z = project({n: x[n] + eta * s[n] for n in x}, rho, kind)
            a = 1.0 if k == 0 else momentum
            x_new = project(
                {n: x[n] + a * (z[n] - x[n]) + (1 - a) * (x[n] - x_prev[n]) for n in x}, rho, kind
            )
            f_new, g_new = evaluate(x_new)
            successes += f_new > f
            x_prev, x, f, g = x, x_new, f_new, g_new
            if f > r_best:
                r_best, r_point, r_grad = f, x, g
            if k + 1 in marks:
                stalled = successes < min_success * (k + 1 - last_mark)
                unchanged = eta == eta_at_mark and r_best == best_at_mark
                eta_at_mark, best_at_mark = eta, r_best
                if stalled or unchanged:
                    eta /= 2.0
                    x = x_prev = r_point
                    f, g = r_best, r_grad
                last_mark, successes = k + 1, 0
            values[r, k + 1], steps[r, k + 1] = f_new, eta
        if r_best > best:
            best, best_point = r_best, r_point
    return AscentTrace(best, best_point, values, steps, evaluations)
