"""BatchNorm folded into the layer before it, for eval-mode evaluation and differentiation.

In eval mode ``bn(conv(x))`` equals a convolution with rescaled weights and a bias, which saves
one memory-bound pass over every activation (and, differentiated, over every gradient). The fold
is a speed-up, never a change of the function: :func:`fold_state` is made of differentiable
tensor operations, so gradients and Hessians taken through it are w.r.t. the model's own
parameters, and every caller checks the folded network against the plain one
(:func:`fold_agrees`) before using it. Both engines use it: the evaluation engine of
``landscape.geometry`` and the Hessian products of ``landscape.curvature``.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

State = dict[str, Tensor]


def prefix(name: str) -> str:
    """``"name."`` for a submodule's state keys (``""`` for the root module)."""
    return f"{name}." if name else ""


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


def checked_fold_plan(model: nn.Module, state: State, x: Tensor) -> FoldPlan | None:
    """:func:`fold_plan` of ``model``, kept only when the folded network reproduces ``model``
    (eval mode) at ``state`` on inputs ``x`` (:func:`fold_agrees`); ``None`` otherwise."""
    plan = fold_plan(model)
    return plan if plan is not None and fold_agrees(plan, model, state, x) else None


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
    dropped.update(prefix(bn_name) + k for k in bn.state_dict())
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
            layer_name, bn_name = prefix(name) + layer_key, prefix(name) + bn_key
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
        lp, bp = prefix(layer), prefix(bn)
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
