"""The hybrid-weight model (HWM) as pure functions: convex combinations, sampling, fusion.

OKDPH builds, every batch, theta_hwm = sum_m r_m * theta_m with r on the simplex, and every so often
pulls the students towards it: theta_m <- gamma * theta_hwm + (1 - gamma) * theta_m.

Only floating-point tensors are combined. Integer buffers (BatchNorm's ``num_batches_tracked``) are
copied from the first state; the reference code averaged them too and truncated the result back on
load, which is harmless but meaningless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn


def convex_combination(
    states: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | Tensor
) -> dict[str, Tensor]:
    """Weighted sum ``sum_m weights[m] * states[m][name]`` of every floating-point tensor.

    Args:
        states: state or parameter dicts with identical keys and shapes.
        weights: one coefficient per state (non-negative, summing to one for a convex combination;
            not enforced so that extrapolation is possible when asked for).

    Returns:
        A new dict with the same keys. Gradients flow back to the inputs (scaled by their weight)
        unless the inputs are detached; non-floating tensors are clones of ``states[0]``'s.
    """
    if not states:
        raise ValueError("convex_combination needs at least one state")
    if len(weights) != len(states):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    out = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        total = weights[0] * first
        for w, state in zip(weights[1:], states[1:]):
            total = total + w * state[name]
        out[name] = total
    return out


def barycentre(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """The mean of the states' floating-point tensors (the expected HWM under Dirichlet(1)).

    Computed without autograd, so the result is a detached snapshot.
    """
    with torch.no_grad():
        return convex_combination(states, [1.0 / len(states)] * len(states))


def sample_coefficients(
    num: int, rng: np.random.Generator, sampling: str = "dirichlet", alpha: float = 1.0
) -> np.ndarray:
    """HWM coefficients r (shape ``(num,)``, on the simplex) for one batch.

    Args:
        num: number of students.
        rng: the caller's random generator (no global state is used).
        sampling: ``"dirichlet"`` draws r ~ Dirichlet(alpha * 1) (alpha = 1 is uniform on the
            simplex, larger alpha concentrates r at the barycentre); ``"mean"`` returns 1/num each.
        alpha: Dirichlet concentration, > 0.
    """
    if sampling == "mean":
        return np.full(num, 1.0 / num)
    if sampling == "dirichlet":
        if alpha <= 0:
            raise ValueError(f"Dirichlet alpha must be positive, got {alpha}")
        return rng.dirichlet(np.full(num, float(alpha)))
    raise ValueError(f"unknown HWM sampling {sampling!r}; use 'dirichlet' or 'mean'")


@torch.no_grad()
def fuse_(module: nn.Module, target: Mapping[str, Tensor], gamma: float) -> None:
    """In place: every floating-point parameter and buffer ``t`` of ``module`` becomes
    ``gamma * target[name] + (1 - gamma) * t``. Integer buffers and optimiser state are untouched."""
    for name, tensor in module.state_dict(keep_vars=True).items():
        if tensor.is_floating_point():
            tensor.mul_(1.0 - gamma).add_(target[name].detach(), alpha=gamma)
