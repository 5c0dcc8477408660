"""Shared trunks and per-member heads: the branch layout of ONE, OKDDip and WML.

A *branchable* architecture splits its forward pass into ``trunk(x)`` (the early stages) and
``head_features(h)`` (the late stages up to the pooled penultimate features), names the trunk's
submodules in ``trunk_modules``, and can describe a narrower head with ``head_width_kwargs(keep)``.

Branch members are ordinary instances of the plain architecture whose trunk submodules are the
*same* module objects (``tie_trunks``). So every member's ``state_dict()`` is already a state dict
of the plain architecture (a peer of a ``resnet32`` branch model is a ``resnet32``), the analysis
half rebuilds each member from ``run.json`` alone, and ``nn.Module.parameters()`` on the group
yields each shared tensor once, so the optimiser updates it once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, cast

import torch
from torch import Tensor, nn


class _Branchable(Protocol):
    """The branch protocol's members, for the type checker (``nn.Module.__getattr__`` types every
    submodule attribute as ``Tensor | Module``)."""

    trunk_modules: Sequence[str]
    classifier: Callable[[Tensor], Tensor]

    def trunk(self, x: Tensor) -> Tensor: ...

    def head_features(self, h: Tensor) -> Tensor: ...

    def features(self, x: Tensor) -> Tensor: ...


def scaled_width(width: int, keep: float) -> int:
    """Channel count of a structured-pruned layer keeping the fraction ``keep`` (at least 1)."""
    return max(1, int(round(width * keep)))


def supports_branches(model: nn.Module) -> bool:
    """Whether ``model`` can share a trunk with siblings (it defines the branch protocol)."""
    return all(hasattr(model, a) for a in ("trunk", "head_features", "trunk_modules"))


def supports_pruning(model: nn.Module) -> bool:
    """Whether ``model`` can describe a narrower head (``head_width_kwargs``)."""
    return hasattr(model, "head_width_kwargs")


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def tie_trunks(models: Sequence[nn.Module]) -> None:
    """Make every model use the first model's trunk submodules (in place).

    Raises:
        ValueError: if the models' trunks differ in structure (a head-only change is fine).
    """
    first = models[0]
    for model in models[1:]:
        for path in cast(_Branchable, first).trunk_modules:
            source = first.get_submodule(path)
            target = model.get_submodule(path)
            shapes = [p.shape for p in source.state_dict().values()]
            if shapes != [p.shape for p in target.state_dict().values()]:
                raise ValueError(f"trunk module {path!r} differs between branch members")
            _set_submodule(model, path, source)


def member_outputs(
    nets: Sequence[nn.Module], views: Sequence[Tensor], shared_trunk: bool
) -> tuple[list[Tensor], list[Tensor]]:
    """Penultimate features and logits of every member.

    With ``shared_trunk`` the trunk runs once on ``views[0]`` and every head reads its output (the
    branch layout); otherwise member i runs on ``views[i]``.
    """
    members = cast("Sequence[_Branchable]", nets)
    if shared_trunk:
        h = members[0].trunk(views[0])
        features = [net.head_features(h) for net in members]
    else:
        features = [net.features(x) for net, x in zip(members, views)]
    return features, [net.classifier(f) for net, f in zip(members, features)]


def cached_trunk_forwards(
    nets: Mapping[str, nn.Module] | nn.ModuleDict,
) -> dict[str, Callable[[Tensor], Tensor]]:
    """Member name -> logits function for tied members that runs the shared trunk once per input.

    Evaluation calls every member on the same batch tensor in turn; the trunk output of the last
    input is reused while the caller passes that same tensor object.
    """
    first = cast(_Branchable, next(iter(nets.values())))
    cache: dict[str, Tensor | None] = {"x": None, "h": None}

    def trunk(x: Tensor) -> Tensor:
        if cache["x"] is not x:
            cache["x"], cache["h"] = x, first.trunk(x)
        h = cache["h"]
        assert h is not None  # always set together with cache["x"]
        return h

    def forward(net: nn.Module) -> Callable[[Tensor], Tensor]:
        member = cast(_Branchable, net)
        return lambda x: member.classifier(member.head_features(trunk(x)))

    return {name: forward(net) for name, net in nets.items()}


@torch.no_grad()
def copy_leading_channels(model: nn.Module, dense_state: Mapping[str, Tensor]) -> None:
    """Initialise a (possibly narrower) model from a dense one of the same architecture.

    Every tensor takes the leading slice of the dense tensor along each dimension (the first
    channels, filters and units), so a pruned head starts as a sub-network of the dense one and
    residual additions stay aligned (both sides keep the same leading channels).
    """
    for name, value in model.state_dict().items():
        source = dense_state[name]
        value.copy_(source[tuple(slice(0, n) for n in value.shape)])


__all__ = [
    "cached_trunk_forwards",
    "copy_leading_channels",
    "member_outputs",
    "scaled_width",
    "supports_branches",
    "supports_pruning",
    "tie_trunks",
]
