"""Weight matching (Ainsworth et al. 2023, Git Re-Basin): permute one network's hidden units to
line them up with another's before comparing the two.

Hidden units can be permuted without changing the function a network computes, so two
independently trained networks may sit in one basin up to such a permutation (Entezari et al.
2022) while the straight line between them crosses a barrier. :func:`permutation_spec` finds the
permutation groups of a network by running it once and recording every operation on its
activations (``torch.overrides.TorchFunctionMode``): a convolution or linear layer opens a new
group (its output channels: weight axis 0, bias); BatchNorm, activations, pooling and dropout
carry a group through; a residual addition merges the groups of its operands (shared groups of
residual connections); flattening a feature map makes the next linear layer's input axis a
group in blocks. The input's channels and the output (the logits) are fixed. An operation it
does not know is one sentence naming it.

:func:`weight_matching` then solves, group by group, the linear assignment problem
``max_P sum <W_a, P W_b>`` (``scipy.optimize.linear_sum_assignment``) with the other groups'
permutations held, and repeats until no group changes (coordinate descent, as the reference
implementation samuela/git-re-basin).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from landscape.core.errors import LandscapeError

State = dict[str, Tensor]

#: Functions that keep the channels of their (first) tensor argument where they are.
_CARRY = (
    "relu",
    "relu_",
    "leaky_relu",
    "gelu",
    "silu",
    "elu",
    "tanh",
    "sigmoid",
    "hardtanh",
    "dropout",
    "pool",  # max/avg/adaptive pooling in 1-3 dimensions
    "clone",
    "contiguous",
    "detach",
    "__getitem__",
)
_ADD = {"add", "add_", "__add__", "__iadd__", "__radd__"}
_FLATTEN = {"flatten", "view", "reshape"}
_IGNORED = {"dim", "size", "__get__", "numel", "__len__", "is_floating_point", "type", "to"}


@dataclass(frozen=True)
class Axis:
    """Where a permutation group acts on a tensor: ``axis``, in ``block``-sized blocks (a linear
    layer after a flattened ``C x L`` map: input index ``c * L + l``)."""

    group: int
    axis: int
    block: int = 1


@dataclass(frozen=True)
class PermutationSpec:
    """The permutation groups of a network: ``sizes[g]`` units each, and for every state entry
    the axes they act on (``axes[name]``)."""

    sizes: dict[int, int]
    axes: dict[str, tuple[Axis, ...]]

    def groups(self) -> list[int]:
        return sorted(self.sizes)


class _Recorder(TorchFunctionMode):
    """Follows each activation's channel group through one forward pass."""

    def __init__(self, names: Mapping[int, str]) -> None:
        super().__init__()
        self.names = names  # id(parameter or buffer) -> state name
        self.parent: dict[int, int] = {}
        self.group_of: dict[int, tuple[int, int]] = {}  # id(activation) -> (group, block)
        self.keep: list[Tensor] = []  # activations stay alive so their ids stay unique
        self.uses: list[tuple[str, int, int, int]] = []  # (name, axis, group, block)
        self.sizes: dict[int, int] = {}
        self.fixed = self._new(0)

    def _new(self, size: int) -> int:
        g = len(self.parent)
        self.parent[g] = g
        self.sizes[g] = size
        return g

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The fixed group absorbs whatever touches it.
            if rb == self.find(self.fixed):
                ra, rb = rb, ra
            self.parent[rb] = ra

    def _mark(self, t: Any, group: int, block: int = 1) -> None:
        if isinstance(t, Tensor):
            self.group_of[id(t)] = (group, block)
            self.keep.append(t)

    def _in(self, t: Tensor) -> tuple[int, int]:
        found = self.group_of.get(id(t))
        if found is None:
            raise LandscapeError(
                "an activation reached a layer by a path weight matching cannot follow; "
                "this network has no known permutation spec"
            )
        return found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name in _IGNORED or not isinstance(out, Tensor):
            return out
        flat = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a])]
        tensors = [t for t in flat if isinstance(t, Tensor)]
        acts = [a for a in tensors if id(a) in self.group_of]
        if (name.startswith("conv") and "transpose" not in name) or name == "linear":
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            g_in, block = self._in(x)
            g_out = self._new(weight.shape[0])
            self.uses.append((self.names[id(weight)], 0, g_out, 1))
            self.uses.append((self.names[id(weight)], 1, g_in, block))
            if isinstance(bias, Tensor):
                self.uses.append((self.names[id(bias)], 0, g_out, 1))
            self._mark(out, g_out)
        elif name == "batch_norm":
            g, block = self._in(args[0])
            for t in (*args[1:5], kwargs.get("weight"), kwargs.get("bias")):
                if isinstance(t, Tensor) and id(t) in self.names:
                    self.uses.append((self.names[id(t)], 0, g, 1))
            self._mark(out, g, block)
        elif acts and all(self.find(self._in(a)[0]) == self.find(self.fixed) for a in acts):
            self._mark(out, self.fixed)  # reshaping the input: its channels are not permuted
        elif name in _ADD and len(acts) == 2:
            (g1, b1), (g2, _) = self._in(acts[0]), self._in(acts[1])
            self.union(g1, g2)
            self._mark(out, g1, b1)
        elif name in _ADD and len(acts) == 1 and len(tensors) == 1:
            self._mark(out, *self._in(acts[0]))  # plus a scalar
        elif name in _FLATTEN and acts:
            x = acts[0]
            g, block = self._in(x)
            if out.dim() == 2 and x.dim() > 2 and out.shape[1] == int(np.prod(x.shape[1:])):
                self._mark(out, g, block * int(np.prod(x.shape[2:])))
            elif out.shape[:2] == x.shape[:2]:
                self._mark(out, g, block)
            else:
                raise LandscapeError(
                    f"weight matching cannot follow a {name} of shape {tuple(out.shape)}"
                )
        elif name == "mean" and acts and out.dim() >= 2 and out.shape[1] == acts[0].shape[1]:
            self._mark(out, *self._in(acts[0]))
        elif any(key in name for key in _CARRY) and acts:
            self._mark(out, *self._in(acts[0]))
        elif acts:
            raise LandscapeError(
                f"weight matching does not know the operation {name!r}; this network has no "
                "known permutation spec"
            )
        return out


def permutation_spec(model: nn.Module, example: Tensor) -> PermutationSpec:
    """The permutation groups of ``model`` (eval mode) found on one forward pass of ``example``
    (a batch of inputs).

    Raises:
        LandscapeError: an operation it cannot follow (one sentence naming it).
    """
    names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
    recorder = _Recorder(names)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recorder:
            recorder._mark(example, recorder.fixed)
            out = model(example)
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or id(out) not in recorder.group_of:
        raise LandscapeError("weight matching needs a network whose output is one tensor of logits")
    recorder.union(recorder.fixed, recorder.group_of[id(out)][0])
    fixed = recorder.find(recorder.fixed)
    roots: dict[int, int] = {}
    axes: dict[str, list[Axis]] = {}
    for name, axis, group, block in recorder.uses:
        root = recorder.find(group)
        if root == fixed:
            continue
        g = roots.setdefault(root, len(roots))
        entry = Axis(g, axis, block)
        if entry not in axes.setdefault(name, []):
            axes[name].append(entry)
    sizes = {
        roots[r]: recorder.sizes[g]
        for g in recorder.parent
        if (r := recorder.find(g)) in roots
        if recorder.sizes[g]
    }
    return PermutationSpec(sizes, {n: tuple(a) for n, a in axes.items()})


def _along(t: Tensor, ax: Axis, n: int) -> Tensor:
    """``t`` viewed so that the group's units are dimension ``ax.axis`` (blocks split off)."""
    if ax.block == 1:
        return t
    shape = list(t.shape)
    shape[ax.axis : ax.axis + 1] = [n, ax.block]
    return t.reshape(shape)


def permute(
    spec: PermutationSpec, state: Mapping[str, Tensor], perms: Mapping[int, Tensor]
) -> State:
    """``state`` with every group's units reordered: unit ``i`` of group ``g`` becomes unit
    ``perms[g][i]`` of the input (a function-preserving reparametrisation)."""
    out = dict(state)
    for name, axes in spec.axes.items():
        t = out[name]
        for ax in axes:
            if ax.group not in perms:
                continue
            n = spec.sizes[ax.group]
            view = _along(t, ax, n)
            t = view.index_select(ax.axis, perms[ax.group].to(t.device)).reshape(t.shape)
        out[name] = t
    return out


@dataclass(frozen=True)
class Alignment:
    """The result of :func:`weight_matching`: the permutations (``perms[g]``), the aligned
    state, the sweeps made and how many units moved."""

    perms: dict[int, Tensor]
    state: State
    sweeps: int
    moved: int
    n_units: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "weight matching (Ainsworth et al. 2023)",
            "groups": len(self.perms),
            "units": self.n_units,
            "units_moved": self.moved,
            "sweeps": self.sweeps,
        }


def weight_matching(
    spec: PermutationSpec,
    target: Mapping[str, Tensor],
    other: Mapping[str, Tensor],
    *,
    max_sweeps: int = 100,
    seed: int = 0,
) -> Alignment:
    """Permute ``other``'s hidden units to match ``target``'s (see the module docstring)."""
    perms = {g: torch.arange(n) for g, n in spec.sizes.items()}
    by_group: dict[int, list[tuple[str, Axis]]] = {g: [] for g in spec.sizes}
    for name, axes in spec.axes.items():
        for ax in axes:
            by_group[ax.group].append((name, ax))
    rng = np.random.default_rng(seed)
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        changed = False
        for g in rng.permutation(list(spec.sizes)):
            g = int(g)
            n = spec.sizes[g]
            others = {h: p for h, p in perms.items() if h != g}
            current = permute(spec, other, others)
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, ax in by_group[g]:
                a = _along(target[name].double().cpu(), ax, n).movedim(ax.axis, 0).reshape(n, -1)
                b = _along(current[name].double().cpu(), ax, n).movedim(ax.axis, 0).reshape(n, -1)
                cost += a @ b.T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            old_score = float(cost[torch.arange(n), perms[g]].sum())
            new_score = float(cost[torch.arange(n), new].sum())
            if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
                perms[g], changed = new, True
        if not changed:
            break
    moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())
    return Alignment(perms, permute(spec, other, perms), sweeps, moved, sum(spec.sizes.values()))


def align_to(
    model: nn.Module,
    example: Tensor,
    target: Mapping[str, Tensor],
    other: Mapping[str, Tensor],
    seed: int = 0,
) -> Alignment:
    """``other`` aligned to ``target`` by weight matching, both states of ``model``'s
    architecture; ``example`` is a batch of inputs for finding the permutation groups."""
    return weight_matching(permutation_spec(model, example), target, other, seed=seed)
