"""Directions in weight space: random (filter-normalised) and model-to-model, and a surface's axes.

Random directions follow Li et al. (2018): Gaussian noise rescaled, filter by filter, to the norm
of the weights it is attached to, so that a unit step means the same relative change in every
layer. Noise is drawn on the CPU from an explicit seed or generator, never the global one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from landscape.core.errors import LandscapeError
from landscape.geometry.subspace import Plane, TrajectoryPCA
from landscape.geometry.weights import State, as_state, buffer_names, difference, parameter_names

NORMALIZATIONS = ("filter", "layer", "none")


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


def resolve_axes(
    directions: Any,
    center: State,
    names: list[str],
    dims: int,
    seed: int | None,
    normalization: str,
    include_1d: bool,
) -> tuple[list[State], str, dict[str, Any]]:
    """The axes of a surface, their units, and a record of how they were made.

    ``directions`` is ``"random"`` (``dims`` seeded Gaussian directions over ``names``, normalised
    to the scale of ``center``), a :class:`Plane` or :class:`TrajectoryPCA` (their axes and units),
    or one direction dict or a sequence of them (taken as given).
    """
    if isinstance(directions, str):
        if directions != "random":
            raise LandscapeError(
                f"directions must be 'random', a Plane, a PCA or dicts, not {directions!r}"
            )
        if normalization not in NORMALIZATIONS:
            raise LandscapeError(f"normalization must be one of {NORMALIZATIONS}")
        gen = torch.Generator().manual_seed(int(seed if seed is not None else 0))
        axes = [
            random_direction(
                center, names, seed=gen, normalization=normalization, include_1d=include_1d
            )
            for _ in range(dims)
        ]
        units = {
            "filter": "filter-normalised direction units",
            "layer": "layer-normalised direction units",
            "none": "raw Gaussian direction units",
        }[normalization]
        meta = {
            "kind": "random",
            "normalization": normalization,
            "include_1d": include_1d,
            "seed": int(seed if seed is not None else 0),
        }
    elif isinstance(directions, Plane | TrajectoryPCA):
        axes, units = [dict(a) for a in directions.axes], directions.units
        meta = {"kind": "plane" if isinstance(directions, Plane) else "pca", **directions.to_dict()}
    else:
        given = [directions] if isinstance(directions, Mapping) else list(directions)
        axes, units = [dict(d) for d in given], "direction units (user-supplied)"
        meta = {"kind": "given"}
    unknown = sorted({k for a in axes for k in a} - set(center))
    if unknown:
        raise LandscapeError(f"a direction holds names the model lacks: {', '.join(unknown[:3])}")
    return axes, units, meta
