"""What one analysis of a run works with: its settings, and the run's data and members.

Every analysis runs on a fixed, seeded subset of the training split without augmentation (and a
subset of the test split for curves), the model in eval mode. The hybrid's BatchNorm statistics
belong to no trained network, so with ``bn="recalibrate"`` (default) they are recomputed on the
training subset before it is measured. :class:`Context` is what every measure sees of the run
(:class:`landscape.measures.base.MeasureContext`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from landscape.core.device import resolve_device
from landscape.core.distributed import rank_and_world
from landscape.core.errors import LandscapeError
from landscape.geometry.batchnorm import BN_POLICIES, batchnorm_layers, recalibrate
from landscape.measures.base import Measure
from landscape.measures.registry import default_analyses, measures, option_defaults
from landscape.pipeline.okdph_adapter import load_dataset
from landscape.pipeline.runs import Checkpoint, Run
from landscape.pipeline.store import file_digest

#: Settings of the analysis as a whole (every measure's own settings come from the registry).
COMMON_DEFAULTS: dict[str, Any] = {
    "epochs": "last",  # "last", "all" or a comma-separated list of epochs
    "members": (),  # empty: every member
    "analyses": None,  # None: the registry's default analyses
    "samples": 512,  # training samples (a seeded subset), also the BatchNorm calibration set
    "test_samples": 512,
    "batch_size": 256,
    "bn": "recalibrate",
    "seed": 0,
    "device": None,
    # Where eigen-solves keep their basis: "device" or "cpu" (memory only; values unchanged).
    "lanczos_basis": "device",
}


class AnalyzeSettings:
    """Every knob of ``landscape analyze``, recorded in settings.json and in each result's
    fingerprint: the common settings of :data:`COMMON_DEFAULTS` and the settings of every
    registered measure (fields of the measures' settings dataclasses), read as attributes.

    ``AnalyzeSettings(k=1, analyses=("eigen",))``; an unknown name is a ``LandscapeError``.
    """

    def __init__(self, **values: Any) -> None:
        defaults = {**COMMON_DEFAULTS, **option_defaults(measures().values())}
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise LandscapeError(
                f"unknown analysis setting {unknown[0]!r}; settings: {', '.join(defaults)}"
            )
        merged = {**defaults, **values}
        if merged["analyses"] is None:
            merged["analyses"] = default_analyses()
        object.__setattr__(self, "_values", merged)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"AnalyzeSettings has no setting {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._values:
            raise AttributeError(f"AnalyzeSettings has no setting {name!r}")
        self._values[name] = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnalyzeSettings) and self._values == other._values

    def __repr__(self) -> str:
        return f"AnalyzeSettings({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def replace(self, **changes: Any) -> AnalyzeSettings:
        """A copy with ``changes``."""
        return AnalyzeSettings(**{**self._values, **changes})

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name (a copy)."""
        return dict(self._values)

    def for_measure(self, measure: Measure) -> Any:
        """The measure's own settings dataclass, filled from these settings."""
        names = [f.name for f in dataclasses.fields(measure.settings)]
        return measure.settings(**{n: self._values[n] for n in names})

    def validate(self) -> None:
        """Refuse values no analysis can use (``LandscapeError``, one sentence)."""
        known = measures()
        unknown = [a for a in self.analyses if a not in known]
        if unknown:
            raise LandscapeError(f"unknown analysis {unknown[0]!r}; choose from {', '.join(known)}")
        if self.samples < 1 or self.test_samples < 1:
            raise LandscapeError("--samples must be positive")
        if self.batch_size < 1:
            raise LandscapeError(f"--batch-size must be positive, not {self.batch_size}")
        if self.bn not in BN_POLICIES:
            raise LandscapeError(f"--bn must be one of {', '.join(BN_POLICIES)}, not {self.bn!r}")
        if self.lanczos_basis not in ("device", "cpu"):
            raise LandscapeError(f"lanczos_basis must be device or cpu, not {self.lanczos_basis!r}")
        # Every measure's settings, asked for or not: they all enter settings.json.
        for measure in known.values():
            self.for_measure(measure).validate()


def _batches(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


class Context:
    """Data subsets and members' weights for one analysis, loaded on first use (what every
    measure sees of the run: :class:`landscape.measures.base.MeasureContext`)."""

    def __init__(self, run: Run, settings: AnalyzeSettings, show_progress: bool = True) -> None:
        self.run, self.settings, self.show = run, settings, show_progress
        self.device = resolve_device(settings.device)
        self._data: dict[str, list[tuple[Tensor, Tensor]]] = {}
        self._states: dict[tuple[int, str], dict[str, Tensor]] = {}

    def data(self, split: str, shard: bool = False) -> list[tuple[Tensor, Tensor]]:
        """The fixed, seeded subset of ``split`` ("train" or "test") as device batches.

        With ``shard`` under ``torch.distributed``, this rank's share (every world-size-th sample):
        Hessian products sum the shards over ranks, so each rank passes only its own.
        """
        rank, world = rank_and_world()
        if shard and world > 1:
            key = f"{split}@{rank}/{world}"
            if key not in self._data:
                x = torch.cat([xb for xb, _ in self.data(split)])
                y = torch.cat([yb for _, yb in self.data(split)])
                self._data[key] = _batches(x[rank::world], y[rank::world], self.settings.batch_size)
            return self._data[key]
        if split not in self._data:
            ds = self._dataset()
            for name in ("train", "test"):
                n_all = len(ds.targets(name))
                n = min(
                    self.settings.samples if name == "train" else self.settings.test_samples, n_all
                )
                gen = torch.Generator().manual_seed(
                    self.settings.seed + (0 if name == "train" else 1)
                )
                idx = torch.randperm(n_all, generator=gen)[:n].sort().values.to(ds.device)
                self._data[name] = _batches(
                    ds.inputs(name, idx), ds.targets(name, idx), self.settings.batch_size
                )
        return self._data[split]

    def full_split(self, split: str) -> list[tuple[Tensor, Tensor]]:
        """The whole ``split`` ("train": un-augmented) as device batches, for loss and accuracy."""
        key = f"{split}@full"
        if key not in self._data:
            ds = self._dataset()
            self._data[key] = _batches(ds.inputs(split), ds.targets(split), 1024)
        return self._data[key]

    def _dataset(self) -> Any:
        return load_dataset(self.run.data, self.device)

    def n_samples(self, split: str) -> int:
        return sum(len(y) for _, y in self.data(split))

    def template(self, member: str) -> nn.Module:
        return self.run.build_model(member).to(self.device).eval()

    def state(self, epoch: int, member: str) -> dict[str, Tensor]:
        """The member's weights as saved (on the device)."""
        key = (epoch, member)
        if key not in self._states:
            if len(self._states) > 16:
                self._states.clear()
            ckpt = self.run.checkpoint(epoch)
            model = self.run.load_model(ckpt, member)  # validates shapes against the architecture
            self._states[key] = {k: v.to(self.device) for k, v in model.state_dict().items()}
        return self._states[key]

    def model(self, epoch: int, member: str) -> nn.Module:
        """The member as a network in eval mode; the hybrid with recalibrated BatchNorm statistics."""
        net = self.template(member)
        state = self.state(epoch, member)
        if self.needs_recalibration(member, net):
            state = recalibrate(net, state, self.data("train"))
        net.load_state_dict(state)
        return net.eval()

    def needs_recalibration(self, member: str, net: nn.Module) -> bool:
        return (
            self.run.roles.get(member) == "hybrid"
            and self.settings.bn == "recalibrate"
            and bool(batchnorm_layers(net))
        )

    def ckpt_digest(self, epoch: int, members: tuple[str, ...]) -> list[str]:
        ckpt: Checkpoint = self.run.checkpoint(epoch)
        return [file_digest(ckpt.files[m]) for m in members]
