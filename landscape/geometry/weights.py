"""Weights as name -> tensor dicts: full states, arithmetic, random and model-to-model directions.

A *state* is a ``dict[str, Tensor]`` holding every parameter and buffer of a model under its
``state_dict`` name. A *direction* is a dict over a subset of those names (usually parameters; the
directions between models also carry floating-point buffers, which the ``bn="interpolate"`` policy
moves along). All functions here are pure: they never modify their inputs and never touch the
global random generator.

Planes through three models and PCA of a trajectory live in :mod:`landscape.geometry.subspace`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from landscape.core.common import LandscapeError, select_parameters

State = dict[str, Tensor]

NORMALIZATIONS = ("filter", "layer", "none")


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


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None:
        raise LandscapeError("random directions need a seed or a torch.Generator")
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def normalize_direction(
    direction: Mapping[str, Tensor],
    weights: Mapping[str, Tensor],
    normalization: str = "filter",
    *,
    include_1d: bool = False,
) -> State:
    """Rescale a direction to the scale of ``weights`` as in Li et al. (2018).

    ``"filter"``: every output filter (each slice along dim 0 of a tensor with two or more
    dimensions) gets the Euclidean norm of the matching filter of the weights. ``"layer"``: every
    tensor gets the norm of the matching weight tensor. ``"none"``: unchanged. One-dimensional
    tensors (biases, BatchNorm scales and shifts) are zeroed unless ``include_1d``; when included
    they are rescaled as whole tensors, since a bias has no filter structure.

    Returns:
        A new direction over the same names.
    """
    if normalization not in NORMALIZATIONS:
        raise LandscapeError(
            f"normalization must be one of {NORMALIZATIONS}, not {normalization!r}"
        )
    out = {}
    for name, d in direction.items():
        w = weights[name].to(d.dtype)
        if d.dim() <= 1 and not include_1d:
            out[name] = torch.zeros_like(d)
        elif normalization == "none":
            out[name] = d.clone()
        elif normalization == "layer" or d.dim() <= 1:
            out[name] = d * (w.norm() / (d.norm() + 1e-10))
        else:
            d_rows, w_rows = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
            factor = w_rows.norm(dim=1) / (d_rows.norm(dim=1) + 1e-10)
            out[name] = (d_rows * factor[:, None]).reshape(d.shape)
    return out


def random_direction(
    weights: Mapping[str, Tensor],
    names: Iterable[str],
    *,
    seed: int | torch.Generator | None,
    normalization: str = "filter",
    include_1d: bool = False,
) -> State:
    """A Gaussian direction over ``names``, normalised to the scale of ``weights``.

    The noise is drawn on the CPU from ``seed`` (an int or a ``torch.Generator``, consumed in the
    order of ``names``) and then moved to each weight's device, so a seed gives the same direction
    on every device.

    Args:
        weights: the point the direction is attached to (a state or parameter dict).
        names: which tensors the direction moves (typically ``parameter_names(model)``).
        seed: an int or a generator; required, since there is no hidden global seed.
        normalization: ``"filter"`` (default, Li et al. 2018), ``"layer"`` or ``"none"``.
        include_1d: also move one-dimensional tensors (zeroed by default).

    Returns:
        ``name -> tensor`` with the dtype and device of the weights.
    """
    gen = _generator(seed)
    raw = {}
    for name in names:
        w = weights[name]
        noise = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        raw[name] = noise.to(device=w.device, dtype=w.dtype)
    return normalize_direction(raw, weights, normalization, include_1d=include_1d)


def filter_norms(tensor: Tensor) -> Tensor:
    """Euclidean norm of every slice along dim 0 (the output filters of a weight tensor)."""
    return tensor.reshape(tensor.shape[0], -1).norm(dim=1)


def direction_between(
    model: nn.Module,
    start: nn.Module | Mapping[str, Tensor],
    end: nn.Module | Mapping[str, Tensor],
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> State:
    """``end - start`` over the selected parameters and every floating-point buffer.

    The buffer components (BatchNorm running statistics) are used only by the
    ``bn="interpolate"`` policy; the other policies ignore them.
    """
    a, b = as_state(model, start), as_state(model, end)
    return difference(b, a, parameter_names(model, include, exclude) + buffer_names(model))
