"""BatchNorm at points that are not trained checkpoints: policies, recalibration and folding.

In eval mode a BatchNorm layer normalises with running statistics. At an interpolated, perturbed
or hybrid point those statistics belong to no trained model, so every geometry routine takes a
policy, records it in its result, and applies it to every such point:

* ``"recalibrate"`` (default): recompute the running statistics at the point by a train-mode,
  no-grad pass over a fixed subset with cumulative averaging (``momentum=None``), as Garipov et al.
  (2018) do for mode connectivity; then evaluate in eval mode.
* ``"interpolate"``: move the running statistics like the weights (only possible along directions
  between models, which carry buffer components).
* ``"keep"``: use the centre's (or start's) running statistics everywhere.

Folding BatchNorm into the layer before it is a speed-up, not a policy
(:mod:`landscape.core.fold`, shared with the curvature engine).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from landscape.core.errors import LandscapeError
from landscape.core.fold import prefix
from landscape.geometry.weights import State

BN_POLICIES = ("recalibrate", "interpolate", "keep")


def check_policy(bn: str) -> str:
    """``bn`` if it names a policy, else a LandscapeError listing the policies."""
    if bn not in BN_POLICIES:
        raise LandscapeError(f"bn must be one of {', '.join(BN_POLICIES)}, not {bn!r}")
    return bn


def batchnorm_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """BatchNorm layers that keep running statistics, by module name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
    }


def running_stat_names(model: nn.Module) -> list[str]:
    """State names of every running mean, running variance and batch counter."""
    names = []
    for name, m in batchnorm_layers(model).items():
        names += [prefix(name) + "running_mean", prefix(name) + "running_var"]
        if m.num_batches_tracked is not None:
            names.append(prefix(name) + "num_batches_tracked")
    return names


def recalibrate(model: nn.Module, state: State, batches: Sequence[tuple[Tensor, Tensor]]) -> State:
    """``state`` with its BatchNorm running statistics recomputed over ``batches``.

    Each BatchNorm layer is reset (mean 0, variance 1, counter 0), switched to train mode with
    ``momentum=None`` (cumulative averaging: every batch's mean and unbiased variance weigh
    equally), and the model is run once over ``batches`` without gradients; every other layer
    stays in eval mode, so dropout is off. The model's own mode, momenta and tensors are restored.

    Args:
        model: the architecture (its tensors are not used; ``state`` supplies all of them).
        state: full state at the point (parameters and buffers).
        batches: the fixed calibration subset, as given (batch composition matters to
            BatchNorm, so it is never re-chunked).

    Returns:
        A new state; tensors other than the running statistics are shared with ``state``.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return dict(state)
    if not batches:
        raise LandscapeError(
            "bn='recalibrate' needs calibration batches (bn_data), but none were given"
        )
    fresh = dict(state)
    for name in layers:
        p = prefix(name)
        fresh[p + "running_mean"] = torch.zeros_like(state[p + "running_mean"])
        fresh[p + "running_var"] = torch.ones_like(state[p + "running_var"])
        if p + "num_batches_tracked" in state:
            fresh[p + "num_batches_tracked"] = torch.zeros_like(state[p + "num_batches_tracked"])
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers.values()}
    try:
        model.eval()
        for m in layers.values():
            m.train()
            m.momentum = None
        with torch.no_grad():
            for x, _ in batches:
                functional_call(model, fresh, (x,))
    finally:
        for module, mode in modes.items():
            module.training = mode
        for m, momentum in momenta.items():
            m.momentum = momentum
    return fresh


def axes_for_policy(model: nn.Module, axes: Sequence[State], bn: str) -> list[State]:
    """Directions restricted to what policy ``bn`` moves.

    ``"keep"`` and ``"recalibrate"`` move parameters only. ``"interpolate"`` also moves the running
    means and variances, which only directions between models carry (see
    ``landscape.geometry.directions.direction_between``).

    Raises:
        LandscapeError: for ``"interpolate"`` with directions lacking running statistics.
    """
    params = {n for n, _ in model.named_parameters()}
    if bn != "interpolate":
        return [{k: v for k, v in a.items() if k in params} for a in axes]
    stats = [n for n in running_stat_names(model) if not n.endswith("num_batches_tracked")]
    if any(n not in a for n in stats for a in axes):
        raise LandscapeError(
            "bn='interpolate' needs directions between models, which carry BatchNorm running "
            "statistics; use bn='recalibrate' or bn='keep' with these directions"
        )
    moved = params | set(stats)
    return [{k: v for k, v in a.items() if k in moved} for a in axes]
