"""What every online-distillation method provides to the trainer, and the method registry.

A method is an ``nn.Module`` that owns its networks (``self.nets``, a ``ModuleDict`` whose names are
the checkpoint member names) and any extra trainable state (attention projections, peer weights).
The trainer owns the loop; the method owns the joint loss of one batch and anything that happens
between steps (OKDPH's fusion).

Methods outside okdph arrive through the ``okdph.methods`` entry-point group: each entry point
names a :class:`Method` subclass whose ``name`` is the entry point's name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from okdph.config import ConfigError, build_method_config
from okdph.plugins import EntryPointGroup


@dataclass
class StepContext:
    """Where the loop is: ``epoch`` (0-based), ``batch`` (index in the epoch), ``step`` (global
    batches done before this one), ``epochs`` (total), and ``rng``, the method's generator for this
    epoch (seeded from the run seed and the epoch, so a resumed epoch draws the same numbers)."""

    epoch: int
    batch: int
    step: int
    epochs: int
    rng: np.random.Generator
    # Learning rate of this step (the optimiser's first parameter group), for methods whose
    # updates model an SGD step (WML's hypergradient).
    lr: float = 0.0
    # Turns a batch mean computed on this rank's shard into the global batch's mean (summed over
    # ranks under torchrun; the identity in one process), for a method that differentiates batch
    # quantities itself (SAM's ascent, WML's hypergradient) rather than through the trainer.
    global_mean: Callable[[Tensor], Tensor] = lambda t: t


@dataclass
class NoConfig:
    """A method without hyper-parameters."""


class Method(nn.Module):
    """Base class: subclasses set ``name``, ``Config``, ``loss_terms`` and implement ``compute_loss``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    default_init: ClassVar[str] = "independent"
    # term -> formula; recorded in run.json so a run says exactly what it optimised.
    loss_terms: ClassVar[dict[str, str]] = {}

    def __init__(
        self, config: Any, make_model: Callable[..., nn.Module], num_students: int, init: str
    ) -> None:
        super().__init__()
        self.config = config
        self.num_students = num_students
        self.nets = nn.ModuleDict(self.build_members(make_model, num_students, init))

    def build_members(
        self, make_model: Callable[..., nn.Module], num_students: int, init: str
    ) -> dict[str, nn.Module]:
        """The checkpoint members by name (``student_0`` ... by default).

        ``make_model(**overrides)`` builds the run's architecture; keyword overrides (a pruned
        head's width) must be reported by ``member_arch`` so the member can be rebuilt.
        """
        students = make_students(make_model, num_students, init)
        return {f"student_{i}": net for i, net in enumerate(students)}

    @property
    def students(self) -> list[nn.Module]:
        return [self.nets[f"student_{i}"] for i in range(self.num_students)]

    @property
    def num_views(self) -> int:
        """Input views per batch (one per network that sees data)."""
        return len(self.nets)

    def view_names(self) -> list[str]:
        """Who consumes each input view, for run.json and error messages."""
        names = list(self.nets)[: self.num_views]
        return names + ["hybrid"] * (self.num_views - len(names))

    def member_arch(self, name: str, base_arch: dict[str, Any]) -> dict[str, Any]:
        """Registry name and keyword arguments that rebuild member ``name`` (run.json)."""
        return base_arch

    def compute_loss(
        self, views: list[Tensor], y: Tensor, ctx: StepContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The joint loss to back-propagate once, and named terms (scalars) to log.

        Terms named ``<member>/loss`` are each member's own objective; the trainer watches them for
        NaN/inf to name the member that diverged.
        """
        raise NotImplementedError

    def before_step(self, ctx: StepContext) -> None:
        """Called between the backward pass and the optimiser step (SAM restores its weights)."""

    def after_step(self, ctx: StepContext) -> None:
        """Called after every optimiser step."""

    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        """Called before the first batch of ``epoch`` (also right after a resume)."""

    def learning_rate(self, epoch: int, epochs: int, base_lr: float) -> float | None:
        """The learning rate of every parameter group for ``epoch`` (0-based), set before its
        first batch, for a method that owns its schedule (SWA); ``None`` keeps the run's."""
        return None

    def after_epoch(self, epochs_done: int, batches: Callable[[int], Iterator[Tensor]]) -> None:
        """Called after an epoch's last step, before its test evaluation. ``batches(view)``
        iterates over the whole training split once in batches of view ``view``'s augmentation
        (normalised inputs, from a stream of its own: the training randomness is untouched), for
        a method that recomputes statistics (SWA's BatchNorm)."""

    def end_epoch(self, epochs_done: int) -> None:
        """Called after an epoch's test evaluation, before its checkpoint is written."""

    def eval_forwards(self) -> dict[str, Callable[[Tensor], Tensor]]:
        """Member name -> function from inputs to logits, for evaluation (the caller sets eval
        mode and no_grad); derived members such as OKDPH's hybrid are built once here."""
        return dict(self.nets.items())

    def member_role(self, name: str) -> str:
        """``network`` (trained), ``hybrid`` (OKDPH's HWM) or ``average`` (weights averaged over
        training: SWA, EMA), recorded in run.json for the analyses."""
        return "hybrid" if name == "hybrid" else "network"

    def ensemble_members(self) -> list[str]:
        """Members whose mean logits form the reported ``ensemble``."""
        return list(self.nets)

    def ensemble_weights(self) -> Tensor | None:
        """Weights of the members' logits in the reported ``ensemble`` (``None``: the mean), for
        a method that defines its ensemble as a weighted one (WML)."""
        return None

    def checkpoint_states(self) -> dict[str, dict[str, Tensor]]:
        """State dict of every member written to checkpoints (derived members included)."""
        return {name: net.state_dict() for name, net in self.nets.items()}

    def extra_state(self) -> dict[str, Tensor]:
        """Trainable or buffered state outside the members (needed to resume, not to analyse)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("nets.")}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Restore what ``extra_state`` returned (members are loaded separately)."""
        expected = set(self.extra_state())
        if set(state) != expected:
            raise ValueError(f"method state keys {sorted(state)} do not match {sorted(expected)}")
        self.load_state_dict(state, strict=False)

    def describe(self) -> dict[str, Any]:
        """What run.json records about the method: name, resolved config and loss formulas."""
        return {
            "name": self.name,
            "config": asdict(self.config),
            "loss_terms": dict(self.loss_terms),
        }


def make_students(make_model: Callable[..., nn.Module], num: int, init: str) -> list[nn.Module]:
    """``num`` networks: copies of one initialisation (``shared``) or independent draws."""
    if num < 1:
        raise ConfigError(f"num_students must be at least 1, got {num}")
    if init == "shared":
        first = make_model()
        return [first] + [copy.deepcopy(first) for _ in range(num - 1)]
    if init == "independent":
        return [make_model() for _ in range(num)]
    raise ConfigError(f"unknown init {init!r}; use 'shared', 'independent' or 'auto'")


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


_METHODS: dict[str, type[Method]] = {}


def _not_a_method(name: str, obj: Any) -> str | None:
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        return f"it is {obj!r}, not a subclass of okdph.methods.Method"
    if obj.name != name:
        return (
            f"its class {obj.__qualname__} is named {obj.name!r}; the class's name attribute "
            "must be the entry point's name (run.json records it)"
        )
    return None


PLUGINS = EntryPointGroup("okdph.methods", "method", check=_not_a_method, error=ConfigError)


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a Method subclass under its ``name``."""
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def list_methods(plugins: bool = True) -> list[str]:
    """Method names, sorted: the built-in ones and (``plugins``) those of the ``okdph.methods``
    entry points (not imported until used)."""
    return sorted(set(_METHODS) | (set(PLUGINS.names()) if plugins else set()))


def method_class(name: str) -> type[Method]:
    """The class of method ``name``: a built-in one or an ``okdph.methods`` entry point, a
    :class:`Method` subclass whose ``name`` is the entry point's."""
    if name in _METHODS:
        return _METHODS[name]
    cls = PLUGINS.load(name)
    if cls is None:
        raise ConfigError(
            f"unknown method {name!r}; available methods: {', '.join(list_methods())}"
        )
    return cls


def method_options(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Every option of method ``name`` as a run would use it: the defaults of its ``Config`` with
    ``args`` applied and validated (what run.json records as the method's config)."""
    return asdict(build_method_config(method_class(name).Config, name, args))


def build_method(
    name: str,
    args: dict[str, Any],
    make_model: Callable[..., nn.Module],
    num_students: int,
    init: str = "auto",
) -> Method:
    """Instantiate method ``name`` with ``method.KEY=VALUE`` arguments and its networks."""
    cls = method_class(name)
    config = build_method_config(cls.Config, name, args)
    return cls(config, make_model, num_students, cls.default_init if init == "auto" else init)
