"""The contract of a measure: what one module declares to add a flatness measure to ``landscape``.

A :class:`Measure` says

* its ``name`` (the ``--analyses`` word and the results folder name) and ``scope``: one value per
  member, per pair of members, per plane of three members, or per run (across checkpoints);
* its ``settings``: a dataclass whose fields become ``landscape analyze`` flags (``--field-name``)
  and, with the common settings in :data:`BASE_INPUTS`, the inputs of its results' fingerprints;
* its ``definition`` (a versioned string: bump the version when a number changes meaning);
* ``compute``: the JSON-ready record of one piece of work;
* ``fields``: the numbers it adds to a member's row of ``summary.json`` (or to a curve entry) and
  which of them ``landscape compare`` gathers;
* ``figures`` and the report ``section`` they appear in.

Planning, the results store, ``summary.json``, the report, the CLI and ``landscape compare`` loop
over the registry (:mod:`landscape.measures.registry`); nothing else has to change to add one.
Measures see the run through :class:`MeasureContext` only (data subsets, members' weights and
networks), so they never depend on how a run directory is read.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeGuard

import torch
from torch import Tensor, nn

from landscape.core.errors import LandscapeError

#: Common settings every result depends on (besides its measure's own settings).
BASE_INPUTS = ("samples", "batch_size", "seed", "bn")

Batches = list[tuple[Tensor, Tensor]]


class Scope(str, enum.Enum):
    """What one value of a measure describes."""

    MEMBER = "member"  # one network at one epoch
    PAIR = "pair"  # two members at one epoch (a curve between them)
    PLANE = "plane"  # three members at one epoch (the plane through them)
    RUN = "run"  # the members across the run's checkpoints


_EPOCH = re.compile(r"^epoch_(\d+)$")


@dataclass(frozen=True)
class PieceKey:
    """The address of one result: which measure, at which epoch, of which members.

    :meth:`path` turns it into the store's relative path, the one place where that happens:
    ``epoch_0030/student_0/eigen`` (member), ``epoch_0030/interp/student_0--hybrid`` (pair and
    plane), ``trajectory/student_0--student_1`` (run). ``summary.json`` keys its records by
    these paths.
    """

    measure: str
    scope: Scope
    epoch: int | None
    members: tuple[str, ...]

    def path(self) -> str:
        if self.scope is Scope.RUN:
            return f"{self.measure}/{'--'.join(self.members)}"
        tag = f"epoch_{self.epoch:04d}"
        if self.scope is Scope.MEMBER:
            return f"{tag}/{self.members[0]}/{self.measure}"
        return f"{tag}/{self.measure}/{'--'.join(self.members)}"

    @property
    def member(self) -> str:
        """The member of a member-scope key."""
        return self.members[0]

    @classmethod
    def parse(cls, path: str) -> PieceKey:
        """The key of a store path (the inverse of :meth:`path`; members never contain ``--``)."""
        parts = path.split("/")
        head = _EPOCH.match(parts[0])
        if head is None and len(parts) == 2:
            return cls(parts[0], Scope.RUN, None, tuple(parts[1].split("--")))
        if head is None or len(parts) != 3:
            raise ValueError(f"{path!r} is not a results key")
        epoch = int(head.group(1))
        if "--" in parts[2]:
            members = tuple(parts[2].split("--"))
            scope = Scope.PAIR if len(members) == 2 else Scope.PLANE
            return cls(parts[1], scope, epoch, members)
        return cls(parts[2], Scope.MEMBER, epoch, (parts[1],))


@dataclass(frozen=True)
class Target:
    """What one piece measures: its key, plus for run-scope measures the checkpoints it spans
    (``epochs``) and the member the picture is centred on (``centre``)."""

    key: PieceKey
    epochs: tuple[int, ...] = ()
    centre: str | None = None

    @property
    def epoch(self) -> int:
        """The epoch of the piece (a run-scope piece: its last checkpoint)."""
        return self.key.epoch if self.key.epoch is not None else self.epochs[-1]

    @property
    def members(self) -> tuple[str, ...]:
        return self.key.members


@dataclass(frozen=True)
class Field:
    """One number a measure adds to ``summary.json`` (a member's row, or a curve's entry).

    Attributes:
        name: the row key (also the measure's name in ``landscape compare``).
        heading: column heading in the report's flatness table (``None``: not shown there).
        compare: gathered per run by ``landscape compare``.
        log: compared on the log scale (ratios; the value must be positive).
        invariant: unchanged when a layer's filters are rescaled and the next layer's inversely.
        contrast: contrasted between methods (paired, per seed).
        correlate: a flatness measure whose rank correlation with generalisation is reported.
        strip: drawn in compare's per-method strip plot.
    """

    name: str
    heading: str | None = None
    compare: bool = False
    log: bool = False
    invariant: bool = False
    contrast: bool = True
    correlate: bool = False
    strip: bool = False


@dataclass(frozen=True)
class Section:
    """A part of the run's report; measures naming the same section share it, in registry order.

    ``heading`` may hold ``{epoch}``; run-scope sections have none.
    """

    name: str
    heading: str
    text: str


Figures = list[tuple[str, Any]]  # (file stem, plotly figure)


class MeasureContext(Protocol):
    """What a measure may use of the run being analysed (``landscape.pipeline.context``)."""

    settings: Any
    device: torch.device
    show: bool

    def data(self, split: str, shard: bool = False) -> Batches: ...

    def full_split(self, split: str) -> Batches: ...

    def template(self, member: str) -> nn.Module: ...

    def state(self, epoch: int, member: str) -> dict[str, Tensor]: ...

    def model(self, epoch: int, member: str) -> nn.Module: ...

    def needs_recalibration(self, member: str, net: nn.Module) -> bool: ...


@dataclass(frozen=True)
class NoSettings:
    """Settings of a measure that has none of its own."""

    def validate(self) -> None:
        return None


class Measure:
    """Base class of a measure; subclasses set the class attributes and implement ``compute``.

    Class attributes:
        name: ``--analyses`` word; results are stored under it.
        scope: :class:`Scope`.
        settings: a dataclass type with defaults for every field; its fields are CLI flags
            (``help`` from ``field(metadata={"help": ...})``) and fingerprint inputs. Fields of
            the same name in two measures are one knob (same type and default).
        uses: further common settings (besides :data:`BASE_INPUTS`) its results depend on.
        definition: versioned definition string, recorded with every result.
        default: part of the default ``--analyses``.
        fields: the summary fields it contributes (see :class:`Field`).
        section: where its figures go in the report.
    """

    name: ClassVar[str]
    scope: ClassVar[Scope] = Scope.MEMBER
    settings: ClassVar[type] = NoSettings
    uses: ClassVar[tuple[str, ...]] = ()
    definition: ClassVar[str]
    default: ClassVar[bool] = True
    fields: ClassVar[tuple[Field, ...]] = ()
    section: ClassVar[Section | None] = None
    summary_group: ClassVar[str | None] = None  # "surfaces": listed in summary.json "surfaces"

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        """The JSON-ready record of one piece (``workdir``: where a long piece may keep
        resumable partial results, ``None`` outside a results store)."""
        raise NotImplementedError

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The summary fields of one record (a member's row entries, or a curve's entry)."""
        return {}

    def groups(self, networks: list[str], hybrids: list[str]) -> list[tuple[str, ...]] | None:
        """Which members a pair- or plane-scope measure takes at one epoch, from the trained
        members (``networks``) and the hybrids present; ``None``: the scope's default (pairs:
        every two networks, then each with the hybrid; plane: two networks and the hybrid or a
        third network)."""
        return None

    def figures(self, records: Mapping[PieceKey, Mapping[str, Any]], epoch: int | None) -> Figures:
        """Figures of this measure's records at ``epoch`` (run scope: ``None``)."""
        return []

    def run_values(
        self, entries: Mapping[PieceKey, Mapping[str, Any]], kinds: Mapping[str, str]
    ) -> dict[str, dict[str, float]]:
        """Per member, the values of this measure's ``compare`` fields in one run, from its
        summary entries at the run's last epoch (member scope: each member's row; pair scope:
        the curves). ``kinds`` maps members to ``students``, ``hybrid``, ``average``, ...."""
        out: dict[str, dict[str, float]] = {}
        for key, entry in entries.items():
            values = {
                f.name: float(entry[f.name])
                for f in self.fields
                if f.compare and is_number(entry.get(f.name))
            }
            if values:
                out[key.member] = values
        return out

    def inputs(self) -> tuple[str, ...]:
        """Names of the settings a result depends on (its fingerprint inputs)."""
        own = tuple(f.name for f in dataclasses.fields(self.settings))
        return (*BASE_INPUTS, *own, *self.uses)

    def fingerprint_inputs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values of :meth:`inputs`, less the settings added to a measure after results
        were stored (``field(metadata={"added": True})``) while they hold their default: a
        stored result was computed as that default, so it stays valid."""
        added = {
            f.name: f.default
            for f in dataclasses.fields(self.settings)
            if f.metadata.get("added") and f.default is not dataclasses.MISSING
        }
        return {k: values[k] for k in self.inputs() if not (k in added and values[k] == added[k])}

    def __repr__(self) -> str:
        return f"<measure {self.name} ({self.scope.value})>"


def settings_help(measure: Measure) -> dict[str, str]:
    """``{field: help text}`` of a measure's settings."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(measure.settings)}


def require(condition: bool, message: str) -> None:
    """Raise the user-facing ``LandscapeError(message)`` unless ``condition`` holds."""
    if not condition:
        raise LandscapeError(message)


def members_of(records: Mapping[PieceKey, Any]) -> dict[str, Any]:
    """``{member: record}`` of member-scope records."""
    return {key.member: rec for key, rec in records.items()}


def tag(epoch: int | None) -> str:
    """The epoch tag of figure stems (``epoch_0030``)."""
    return f"epoch_{epoch:04d}" if epoch is not None else "run"


def is_number(value: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
