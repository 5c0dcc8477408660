"""Training configuration: one dataclass, named presets, and ``key=value`` overrides.

Components own their defaults: a method's hyper-parameters live in that method's ``Config``
dataclass and are set with ``method.KEY=VALUE``; model and data keyword arguments likewise with
``model.KEY=VALUE`` and ``data.KEY=VALUE``. The optimiser is ``optim.KEY=VALUE``.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A user mistake in a preset name, an override or a config value (one plain sentence)."""


@dataclass
class OptimConfig:
    """SGD with step decay, as in the OKDPH paper (lr 0.1, x0.1 at 50% and 75% of the epochs)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    # Fractions of the total epochs at which the learning rate is multiplied by lr_decay.
    milestones: tuple[float, ...] = (0.5, 0.75)
    lr_decay: float = 0.1

    def validate(self) -> None:
        """Raise ConfigError (one sentence) for a value outside its range."""
        _check(self.lr > 0, f"optim.lr must be positive, not {self.lr}")
        _check(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), not {self.momentum}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, not {self.weight_decay}")
        _check(0 < self.lr_decay <= 1, f"optim.lr_decay must be in (0, 1], not {self.lr_decay}")
        _check(
            all(0 < m < 1 for m in self.milestones),
            f"optim.milestones are fractions of the epochs in (0, 1), not {list(self.milestones)}",
        )
        _check(not self.nesterov or self.momentum > 0, "optim.nesterov needs a positive momentum")

    def milestone_epochs(self, epochs: int) -> list[int]:
        """The milestones as epoch indices (at least 1, in increasing order)."""
        return sorted({max(1, round(f * epochs)) for f in self.milestones})


@dataclass
class TrackConfig:
    """Curvature tracking during training (off by default): every ``every`` epochs, or ``points``
    evenly spaced points over the run, or every ``steps`` optimiser steps (one of the three), the
    top Hessian eigenvalue of every member on a fixed, seeded training subset of ``samples``
    un-augmented samples, in batches of the training batch size; ``trace`` adds the Hutch++
    trace. ``bn="train"`` differentiates the training objective's cross-entropy (BatchNorm with
    batch statistics, dropout off), ``"eval"`` the eval-mode loss. Lanczos runs to relative
    accuracy ``tol`` within ``max_iter`` products, warm-started from the member's previous
    eigenvector plus ``mix`` times a random unit vector."""

    every: int = 0
    points: int = 0
    steps: int = 0
    samples: int = 512
    trace: bool = False
    trace_rtol: float = 0.05
    bn: str = "train"
    tol: float = 0.01
    max_iter: int = 60
    mix: float = 0.5

    @property
    def enabled(self) -> bool:
        return bool(self.every or self.points or self.steps)

    def epoch_interval(self, epochs: int) -> int:
        """Epochs between points (0: points are counted in steps, or tracking is off)."""
        if self.points:
            return max(1, epochs // self.points)
        return self.every

    def validate(self) -> None:
        _check(
            sum(bool(v) for v in (self.every, self.points, self.steps)) <= 1,
            "set one of track.every, track.points and track.steps",
        )
        for name in ("every", "points", "steps"):
            value = getattr(self, name)
            _check(value >= 0, f"track.{name} must be non-negative, not {value}")
        _check(self.samples >= 1, f"track.samples must be at least 1, not {self.samples}")
        _check(self.bn in ("train", "eval"), f"track.bn must be train or eval, not {self.bn!r}")
        _check(0 < self.tol < 1, f"track.tol must be in (0, 1), not {self.tol}")
        _check(self.max_iter >= 2, f"track.max_iter must be at least 2, not {self.max_iter}")
        _check(self.mix >= 0, f"track.mix must be non-negative, not {self.mix}")
        _check(
            0 < self.trace_rtol < 1, f"track.trace_rtol must be in (0, 1), not {self.trace_rtol}"
        )


@dataclass
class LogConfig:
    """Where metrics go besides metrics.jsonl: ``tensorboard=true`` also writes TensorBoard
    event files under ``RUN/tensorboard`` (needs the ``tensorboard`` package)."""

    tensorboard: bool = False


@dataclass
class TrainConfig:
    """Everything that defines a training run; resolved and saved in ``run.json``."""

    method: str = "okdph"
    method_args: dict[str, Any] = field(default_factory=dict)
    # A built-in model, an ``okdph.models`` entry point or an import path package.module:callable,
    # optionally with arguments (cnn_digits:width=32; okdph.models.parse_model_spec).
    model: str = "cnn_digits"
    model_args: dict[str, Any] = field(default_factory=dict)
    # A built-in dataset, an ``okdph.datasets`` entry point or an import path (okdph.data).
    data: str = "digits"
    data_args: dict[str, Any] = field(default_factory=dict)
    num_students: int = 2
    # "shared": every student starts from student_0's weights (OKDPH reference code);
    # "independent": each student draws its own; "auto": the method's default.
    init: str = "auto"
    # Augmentation pipeline per network view ("shift+noise", "crop+flip", ...), or one for all.
    augment: tuple[str, ...] = ("none",)
    epochs: int = 30
    # Stop after the first epoch whose mean training cross-entropy of the students (the members
    # that train as networks: `train/<member>/ce`, averaged over the epoch's augmented batches)
    # falls below this value; that epoch's checkpoint is the last. None: train every epoch.
    stop_at_loss: float | None = None
    batch_size: int = 128
    eval_batch_size: int = 1024
    # The test split is evaluated after epoch e (and logged, and stored in e's checkpoint sidecar)
    # when e >= eval_test_from * epochs, and always after the last epoch (or the stopping epoch
    # of stop_at_loss). 0 (the default): every epoch, epoch 0 included.
    eval_test_from: float = 0.0
    optim: OptimConfig = field(default_factory=OptimConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0
    save_every: int = 1
    # Checkpoint retention: keep the last and every keep_every-th epoch's checkpoint (1: all).
    # Trajectories, `--epochs all` and curvature tracking read what is kept; retention never
    # looks at test accuracy.
    keep_every: int = 1
    device: str = "auto"
    # GPU throughput options (no effect on the CPU results while off): channels-last memory layout
    # for networks and image batches, and bfloat16 autocast for forward passes and losses.
    channels_last: bool = False
    amp: bool = False
    # Under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only)
    # instead of each rank's shard.
    sync_batchnorm: bool = False

    def validate(self) -> None:
        """Raise ConfigError (one sentence) for a value outside its range; the registries check
        names (method, model, data, augmentations) when the run is built."""
        _check(self.epochs >= 1, f"epochs must be at least 1, not {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be at least 1, not {self.batch_size}")
        _check(
            self.eval_batch_size >= 1,
            f"eval_batch_size must be at least 1, not {self.eval_batch_size}",
        )
        _check(self.num_students >= 1, f"num_students must be at least 1, not {self.num_students}")
        _check(self.save_every >= 1, f"save_every must be at least 1, not {self.save_every}")
        _check(self.keep_every >= 1, f"keep_every must be at least 1, not {self.keep_every}")
        _check(self.seed >= 0, f"seed must be non-negative, not {self.seed}")
        _check(
            self.init in ("auto", "shared", "independent"),
            f"init must be auto, shared or independent, not {self.init!r}",
        )
        _check(len(self.augment) >= 1, "augment needs at least one pipeline")
        _check(
            0 <= self.eval_test_from <= 1,
            f"eval_test_from must be a fraction of the epochs in [0, 1], not {self.eval_test_from}",
        )
        _check(
            self.stop_at_loss is None or self.stop_at_loss > 0,
            f"stop_at_loss must be positive (or None), not {self.stop_at_loss}",
        )
        self.optim.validate()
        self.track.validate()

    def evaluates_test(self, epoch: int) -> bool:
        """Whether the test split is evaluated after ``epoch`` epochs (0: the initial weights);
        the stopping epoch of ``stop_at_loss`` is evaluated as well (decided by the trainer)."""
        return epoch == self.epochs or epoch >= self.eval_test_from * self.epochs

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys raise ConfigError."""
        cfg = cls()
        for key, value in values.items():
            if key in _SECTIONS:
                for k, v in value.items():
                    _set_field(getattr(cfg, key), k, v, prefix=f"{key}.")
            else:
                _set_field(cfg, key, value)
        return cfg


_DICT_FIELDS = {"method": "method_args", "model": "model_args", "data": "data_args"}
# Dataclass sections set with ``section.KEY=VALUE``.
_SECTIONS = ("optim", "track", "log")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (parsed from text or JSON) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, str):  # nan and inf are no Python literals; they arrive as text
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # No field means anything by nan or inf, and a range check lets nan through.
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, not {value}")
            return float(value)
    elif annotation is str:
        return str(value)
    elif origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (list, tuple)):
            item_type = args[0] if args else Any
            return tuple(_coerce(v, item_type, key) if item_type is not Any else v for v in items)
    elif origin is dict or annotation is dict:
        if isinstance(value, dict):
            return dict(value)
    elif annotation is Any:
        return value
    raise ConfigError(
        f"{key} must be of type {getattr(annotation, '__name__', annotation)}, got {value!r}"
    )


def _plain(annotation: Any) -> bool:
    """Whether ``annotation`` is bool, int, float or str, or one of them or None."""
    args = (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
    inner = [a for a in args if a is not type(None)]
    return len(inner) == 1 and inner[0] in (bool, int, float, str)


def coerce_arguments(func: Any, kwargs: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``kwargs`` converted to the annotated types of ``func``'s parameters, as config fields are,
    so that ``model.width=abc`` is one sentence here rather than an error deep inside the model.

    Only plain annotations (bool, int, float, str, optional or not) are enforced: anything else,
    and a callable whose annotations do not resolve, passes unchanged.
    """
    try:
        params = inspect.signature(func, eval_str=True).parameters
    except Exception:  # no signature, or annotations naming what is not importable here
        return dict(kwargs)
    out = dict(kwargs)
    for key, value in kwargs.items():
        param = params.get(key)
        if param is not None and _plain(param.annotation):
            out[key] = _coerce(value, param.annotation, prefix + key)
    return out


def _set_field(obj: Any, key: str, value: Any, prefix: str = "") -> None:
    types_ = _field_types(obj)
    if key not in types_:
        close = difflib.get_close_matches(key, list(types_), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
    setattr(obj, key, _coerce(value, types_[key], prefix + key))


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``key=value``: Python/JSON literals, else the raw string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: TrainConfig, items: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings to a copy of ``cfg``.

    Keys are top-level fields (``epochs=5``), ``optim.lr=0.05``, ``track.every=5``,
    ``log.tensorboard=true``, or ``method.X``, ``model.X``,
    ``data.X`` for the method's, model's and dataset's own arguments (checked when the run is built).
    """
    cfg = dataclasses.replace(
        cfg,
        method_args=dict(cfg.method_args),
        model_args=dict(cfg.model_args),
        data_args=dict(cfg.data_args),
        **{name: dataclasses.replace(getattr(cfg, name)) for name in _SECTIONS},
    )
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        value = parse_value(raw)
        head, dot, rest = key.partition(".")
        if dot and head in _DICT_FIELDS:
            getattr(cfg, _DICT_FIELDS[head])[rest] = value
        elif dot and head in _SECTIONS:
            _set_field(getattr(cfg, head), rest, value, prefix=f"{head}.")
        elif dot:
            raise ConfigError(
                f"unknown config key {key!r}; dotted keys start with method., model., data., "
                "optim., track. or log."
            )
        else:
            # Strings stay verbatim (a model named "1e3" is still a name), other types are parsed.
            types_ = _field_types(cfg)
            if types_.get(key) in (str, tuple[str, ...]):
                value = raw
            if key in _DICT_FIELDS and getattr(cfg, key) != value:
                # A new method/model/data invalidates the old one's arguments.
                getattr(cfg, _DICT_FIELDS[key]).clear()
            _set_field(cfg, key, value)
    return cfg


def build_method_config(config_cls: type, method: str, args: dict[str, Any]) -> Any:
    """Instantiate a method's ``Config`` dataclass from ``method.KEY=VALUE`` arguments."""
    obj = config_cls()
    for key, value in args.items():
        try:
            _set_field(obj, key, value, prefix="method.")
        except ConfigError as err:
            raise ConfigError(f"{err} for method {method!r}") from None
    # Switches declare their values as field metadata, so that `okdph list methods` shows the
    # same values that are accepted here.
    for f in dataclasses.fields(obj) if dataclasses.is_dataclass(obj) else ():
        allowed = f.metadata.get("choices")
        value = getattr(obj, f.name)
        if allowed and value is not None and value not in allowed:
            raise ConfigError(
                f"method.{f.name} must be one of {', '.join(allowed)}, not {value!r} "
                f"for method {method!r}"
            )
    if hasattr(obj, "validate"):
        obj.validate()
    return obj
