"""Weights as name -> tensor dicts: full states and their arithmetic.

A *state* is a ``dict[str, Tensor]`` holding every parameter and buffer of a model under its
``state_dict`` name. A *direction* is a dict over a subset of those names (usually parameters; the
directions between models also carry floating-point buffers, which the ``bn="interpolate"`` policy
moves along). All functions here are pure: they never modify their inputs and never touch the
global random generator.

Random and model-to-model directions live in :mod:`landscape.geometry.directions`, planes through
three models and PCA of a trajectory in :mod:`landscape.geometry.subspace`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from landscape.core.errors import LandscapeError
from landscape.core.selection import select_parameters

State = dict[str, Tensor]


def as_state(
    model: nn.Module,
    weights: nn.Module | Mapping[str, Tensor] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> State:
    """The full state (every parameter and buffer) of ``model`` with ``weights`` laid over it.

    Args:
        model: the architecture; its own tensors fill in names that ``weights`` lacks, so a
            parameter-only dict (no BatchNorm buffers) is accepted.
        weights: a state dict, a parameter dict or a module of the same architecture; ``None``
            takes the model's current tensors.
        device: where the returned tensors live (default: where they are).
        dtype: floating-point tensors are cast to it (integer buffers are kept as they are).

    Returns:
        A new ``name -> tensor`` dict (detached copies; the inputs are never aliased).

    Raises:
        LandscapeError: for a name the model does not have or a tensor of the wrong shape.
    """
    own = dict(model.state_dict(keep_vars=False))
    given = weights.state_dict() if isinstance(weights, nn.Module) else dict(weights or {})
    unknown = sorted(set(given) - set(own))
    if unknown:
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise LandscapeError(f"the weights hold {len(unknown)} names the model lacks: {shown}")
    state = {}
    for name, ref in own.items():
        t = torch.as_tensor(given.get(name, ref)).detach()
        if t.shape != ref.shape:
            raise LandscapeError(
                f"weight {name!r} has shape {tuple(t.shape)} but the model expects {tuple(ref.shape)}"
            )
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        state[name] = t.to(device if device is not None else t.device).clone()
    return state


def parameter_names(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> list[str]:
    """Names of the trainable parameters selected by the glob filters (see ``select_parameters``)."""
    return list(select_parameters(model, include, exclude))


def buffer_names(model: nn.Module) -> list[str]:
    """Names of the floating-point buffers (BatchNorm running statistics and the like)."""
    return [n for n, b in model.named_buffers() if b.is_floating_point()]


def combine(base: State, terms: Iterable[tuple[float, Mapping[str, Tensor]]]) -> State:
    """``base + sum_k c_k * d_k`` over the names each ``d_k`` holds; other names are copied.

    Every point is computed afresh from ``base`` (never by accumulating steps), so a grid
    coordinate ``i * step`` gives the same weights however the grid is traversed.
    """
    out = dict(base)
    for coef, direction in terms:
        if coef == 0.0:
            continue
        for name, d in direction.items():
            out[name] = out[name] + d.to(out[name].dtype) * coef
    return out


def lerp(start: State, end: State, alpha: float, names: Iterable[str] | None = None) -> State:
    """``(1 - alpha) * start + alpha * end`` over ``names`` (default: every floating tensor).

    ``torch.lerp`` returns ``start`` at ``alpha == 0`` and ``end`` at ``alpha == 1`` bit for bit;
    names outside ``names`` and integer tensors keep ``start``'s values.
    """
    keys = (
        set(names) if names is not None else {k for k, v in start.items() if v.is_floating_point()}
    )
    out = dict(start)
    for name in keys:
        out[name] = torch.lerp(start[name], end[name].to(start[name].dtype), float(alpha))
    return out


def difference(
    end: Mapping[str, Tensor], start: Mapping[str, Tensor], names: Iterable[str]
) -> State:
    """``end - start`` over ``names``, the direction from one model to another."""
    return {n: end[n] - start[n].to(end[n].dtype) for n in names}


def dot(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], names: Iterable[str] | None = None
) -> float:
    """Euclidean inner product over ``names`` (default: the names of ``a``), summed in float64."""
    total = 0.0
    for n in a if names is None else names:
        total += float(torch.sum(a[n].double() * b[n].double()))
    return total


def norm(a: Mapping[str, Tensor], names: Iterable[str] | None = None) -> float:
    """Euclidean norm over ``names`` (default: every name of ``a``)."""
    return dot(a, a, names) ** 0.5


def movable(
    start: Mapping[str, Tensor], end: Mapping[str, Tensor], names: Iterable[str]
) -> list[str]:
    """The names among ``names`` whose tensors differ between ``start`` and ``end``."""
    return [n for n in names if not torch.equal(start[n], end[n].to(start[n].dtype))]
