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

Folding is a speed-up, not a policy: in eval mode ``bn(conv(x))`` equals a convolution with
rescaled weights and a bias, which saves one memory-bound pass over every activation.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from landscape.core.errors import LandscapeError
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


def _prefix(name: str) -> str:
    return f"{name}." if name else ""


def running_stat_names(model: nn.Module) -> list[str]:
    """State names of every running mean, running variance and batch counter."""
    names = []
    for name, m in batchnorm_layers(model).items():
        names += [_prefix(name) + "running_mean", _prefix(name) + "running_var"]
        if m.num_batches_tracked is not None:
            names.append(_prefix(name) + "num_batches_tracked")
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
        p = _prefix(name)
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


_PAIRS = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
    nn.Linear: nn.BatchNorm1d,
}


@dataclasses.dataclass(frozen=True)
class FoldPlan:
    """A copy of a model with BatchNorm layers merged into the layers before them.

    Attributes:
        module: a copy of the model without the folded BatchNorm layers (traced by ``torch.fx``,
            or with the BatchNorm children of its ``nn.Sequential``s made identities); its folded
            layers carry a bias even where the original had none.
        pairs: ``(layer, batchnorm, eps)`` module names for every fold.
        dropped: state names that the folded module no longer has.
    """

    module: nn.Module
    pairs: tuple[tuple[str, str, float], ...]
    dropped: frozenset[str]


def fold_plan(model: nn.Module) -> FoldPlan | None:
    """Plan the eval-mode folding of ``conv -> batchnorm`` pairs, or ``None`` if there is none.

    Uses ``torch.fx`` tracing, which finds pairs wherever they are called. A model that cannot be
    traced (Python control flow on its inputs, such as a reshape chosen by ``x.dim()``) is folded
    where the pairs are adjacent children of an ``nn.Sequential``, whose forward applies them
    in order. Callers check the folded module against the plain one (it is a speed-up, so any
    doubt means: do not fold); ``None`` when no pair is found.
    """
    try:
        traced = fx.symbolic_trace(copy.deepcopy(model))
    except Exception:  # noqa: BLE001  (any tracing failure: fall back to Sequential children)
        return _sequential_plan(model)
    mods = dict(traced.named_modules())
    pairs: list[tuple[str, str, float]] = []
    dropped: set[str] = set()
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(mods[node.target], _BatchNorm):
            continue
        bn, prev = mods[node.target], node.args[0] if node.args else None
        if len(node.args) != 1 or node.kwargs or not isinstance(prev, fx.Node):
            continue
        if prev.op != "call_module" or len(prev.users) != 1:
            continue
        assert isinstance(prev.target, str)  # a call_module node's target is the module's name
        if not _foldable(mods[prev.target], bn):
            continue
        node.replace_all_uses_with(prev)
        traced.graph.erase_node(node)
        pairs.append(_fold_pair(mods[prev.target], prev.target, bn, node.target, dropped))
    if not pairs:
        return None
    traced.graph.lint()
    traced.recompile()
    traced.delete_all_unused_submodules()
    return FoldPlan(traced.eval(), tuple(pairs), frozenset(dropped))


def fold_agrees(plan: FoldPlan, model: nn.Module, state: State, x: Tensor) -> bool:
    """Whether the folded network reproduces ``model`` (eval mode) at ``state`` on inputs ``x``
    (to float tolerances): the guard every caller of :func:`fold_plan` applies."""
    with torch.no_grad():
        plain = functional_call(model, state, (x,))
        folded = functional_call(plan.module, fold_state(plan, state), (x,))
    scale = float(plain.abs().max()) + 1e-6
    return bool(torch.allclose(plain, folded, rtol=1e-3, atol=1e-4 * scale))


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    return (
        type(layer) in _PAIRS
        and type(bn) is _PAIRS[type(layer)]
        and isinstance(bn, _BatchNorm)
        and bn.track_running_stats
        and bn.running_mean is not None
    )


def _fold_pair(
    layer: nn.Module, layer_name: str, bn: nn.Module, bn_name: str, dropped: set[str]
) -> tuple[str, str, float]:
    """Give ``layer`` a bias (the fold needs one) and note the BatchNorm's state as dropped."""
    assert isinstance(bn, _BatchNorm)  # _foldable said so
    if getattr(layer, "bias", None) is None:
        weight = layer.weight
        assert isinstance(weight, Tensor)  # conv and linear layers have a weight tensor
        layer.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype))
    dropped.update(_prefix(bn_name) + k for k in bn.state_dict())
    return layer_name, bn_name, float(bn.eps)


def _sequential_plan(model: nn.Module) -> FoldPlan | None:
    """Fold ``layer, batchnorm`` pairs that are adjacent children of a plain ``nn.Sequential``
    (the BatchNorm becomes an ``nn.Identity`` in a copy of the model)."""
    folded = copy.deepcopy(model)
    pairs: list[tuple[str, str, float]] = []
    dropped: set[str] = set()
    for name, seq in folded.named_modules():
        if type(seq) is not nn.Sequential:  # a subclass may reorder its children
            continue
        children = list(seq.named_children())
        for (layer_key, layer), (bn_key, bn) in zip(children, children[1:], strict=False):
            if not _foldable(layer, bn):
                continue
            layer_name, bn_name = _prefix(name) + layer_key, _prefix(name) + bn_key
            pairs.append(_fold_pair(layer, layer_name, bn, bn_name, dropped))
            setattr(seq, bn_key, nn.Identity())
    if not pairs:
        return None
    return FoldPlan(folded.eval(), tuple(pairs), frozenset(dropped))


def fold_state(plan: FoldPlan, state: State) -> State:
    """The folded module's state at ``state``: ``W' = W * s``, ``b' = (b - mean) * s + beta``.

    ``s = gamma / sqrt(running_var + eps)`` per output channel (``gamma = 1``, ``beta = 0``
    without affine parameters).
    """
    out = {k: v for k, v in state.items() if k not in plan.dropped}
    for layer, bn, eps in plan.pairs:
        lp, bp = _prefix(layer), _prefix(bn)
        weight = state[lp + "weight"]
        mean, var = state[bp + "running_mean"], state[bp + "running_var"]
        s = torch.rsqrt(var + eps)
        if bp + "weight" in state:
            s = s * state[bp + "weight"]
        shift = -mean * s
        if bp + "bias" in state:
            shift = shift + state[bp + "bias"]
        bias = state.get(lp + "bias")
        out[lp + "weight"] = weight * s.reshape(-1, *([1] * (weight.dim() - 1)))
        out[lp + "bias"] = shift if bias is None else bias * s + shift
    return out


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
