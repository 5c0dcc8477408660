"""A training session: what a config asks for, built (data, networks, optimiser, schedule, views),
and the description of it that a run directory records as ``run.json``."""

from __future__ import annotations

import inspect
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from okdph import models
from okdph.augment import Pipeline, build_pipeline
from okdph.config import ConfigError, TrainConfig, coerce_arguments
from okdph.data import TensorDataset, load_dataset
from okdph.distributed import current_world
from okdph.methods import Method, build_method


@dataclass
class Session:
    """Everything a run needs, built from a config: data, networks, optimiser, views."""

    cfg: TrainConfig
    device: torch.device
    data: TensorDataset
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pipelines: list[Pipeline]
    arch: dict[str, Any]


def resolve_device(name: str = "auto") -> torch.device:
    """CUDA when present, else the CPU; ``name`` forces one (``cpu``, ``cuda``, ``cuda:1``)."""
    if name in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was requested but CUDA is not available")
    return device


def model_arguments(cfg: TrainConfig, data: TensorDataset) -> dict[str, Any]:
    """The model's keyword arguments: what the data implies, then the config's.

    The number of classes is the dataset's (``num_classes=data.num_classes``) for every model that
    takes a ``num_classes`` argument (by name or through ``**kwargs``, as torchvision's models do);
    ``input_dim``, ``length`` and ``in_channels`` follow the inputs' shape for a model that names
    them. Arguments in the model string (``model=cnn_digits:width=32``) and ``model.KEY=VALUE``
    override these; a ``num_classes`` below the dataset's is a ConfigError.
    """
    name, spec_kwargs = models.parse_model_spec(cfg.model)
    build = models.factory(name)
    try:
        params = dict(inspect.signature(build).parameters)
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    except ValueError:  # no signature: pass the number of classes, the likeliest argument
        params, takes_kwargs = {}, True
    implied: dict[str, Any] = {}
    if "num_classes" in params or takes_kwargs:
        implied["num_classes"] = data.num_classes
    shape = data.input_shape
    if "input_dim" in params:
        implied["input_dim"] = int(np.prod(shape))
    if "length" in params and data.kind == "signal":
        implied["length"] = shape[-1]
    if "in_channels" in params and data.kind == "image":
        implied["in_channels"] = shape[0]
    explicit = coerce_arguments(build, {**spec_kwargs, **cfg.model_args}, "model.")
    classes = explicit.get("num_classes")
    if isinstance(classes, int) and classes < data.num_classes:
        raise ConfigError(
            f"model.num_classes={classes} is fewer than the {data.num_classes} classes of "
            f"dataset {cfg.data!r}; leave it out to use the dataset's"
        )
    return {**implied, **explicit}


def view_pipelines(specs: list[str], num_views: int) -> list[str]:
    """The augmentation of each of a method's ``num_views`` input views from the listed ones.

    View ``i`` gets the ``i``-th listed pipeline, cycling when fewer are listed (one pipeline:
    every view), and pipelines beyond the method's views are left out. Students come first in
    every method's views, so a preset written for OKDPH (student views, then the HWM's) gives
    DML or KDCL the same per-student views without the HWM's, and every method the same view
    for student ``i`` (the matched protocol).
    """
    return [specs[i % len(specs)] for i in range(num_views)]


def build_session(cfg: TrainConfig) -> Session:
    """Load the data and build the method, optimiser, schedule and views for ``cfg``.

    The config is validated first, so a bad value stops the run before anything is written.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.data, device, **cfg.data_args)
    model_name = models.parse_model_spec(cfg.model)[0]
    kwargs = model_arguments(cfg, data)
    torch.manual_seed(cfg.seed)
    method = build_method(
        cfg.method,
        cfg.method_args,
        # Overrides let a method build members that differ from the run's architecture (WML's
        # pruned heads); the method reports them through member_arch.
        lambda **overrides: models.create(model_name, **{**kwargs, **overrides}),
        cfg.num_students,
        cfg.init,
    ).to(device)
    world = current_world()
    if cfg.sync_batchnorm and world.size > 1:
        if device.type != "cuda":
            raise ConfigError("sync_batchnorm=true needs CUDA (torch's SyncBatchNorm is GPU-only)")
        for name in list(method.nets):
            method.nets[name] = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.nets[name])
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    specs = view_pipelines(list(cfg.augment), method.num_views)
    pipelines = [build_pipeline(s, data.kind) for s in specs]
    o = cfg.optim
    optimizer = torch.optim.SGD(
        method.parameters(),
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        nesterov=o.nesterov,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, o.milestone_epochs(cfg.epochs), o.lr_decay
    )
    return Session(
        cfg,
        device,
        data,
        method,
        optimizer,
        scheduler,
        pipelines,
        {"name": model_name, "kwargs": kwargs},
    )


def describe_world(cfg: TrainConfig) -> dict[str, Any]:
    """How the run is spread over processes (run.json ``distributed``)."""
    world = current_world()
    return {
        "world_size": world.size,
        "batch_size": (
            f"{cfg.batch_size} is the global batch: each of the {world.size} rank(s) trains its "
            "contiguous shard of every batch, gradients summed over ranks"
        ),
        "batchnorm": (
            "synchronised over ranks (SyncBatchNorm)"
            if cfg.sync_batchnorm and world.size > 1
            else "each rank's own shard"
            if world.size > 1
            else "the batch"
        ),
    }


def describe_run(session: Session, command: list[str] | None = None) -> dict[str, Any]:
    """The ``run.json`` of a new run: method, architecture, data, members, views, config and
    environment, so that the run directory describes itself."""
    data_info = {
        "name": session.cfg.data,
        "kwargs": dict(session.cfg.data_args),
        "kind": session.data.kind,
        "num_classes": session.data.num_classes,
        "input_shape": list(session.data.input_shape),
        "normalization": {
            "scale": session.data.scale,
            "mean": list(session.data.mean),
            "std": list(session.data.std),
        },
        **session.data.meta,
    }
    members = {
        name: {
            "arch": session.method.member_arch(name, session.arch),
            "role": session.method.member_role(name),
        }
        for name in session.method.checkpoint_states()
    }
    return {
        "method": session.method.describe(),
        "arch": session.arch,
        "data": data_info,
        "members": members,
        "num_students": session.cfg.num_students,
        "init": session.cfg.init if session.cfg.init != "auto" else session.method.default_init,
        "augment_rule": (
            f"{len(session.cfg.augment)} pipeline(s) listed for {session.method.num_views} view(s): view i "
            "gets pipeline i, cycling when fewer are listed, extra ones left out"
        ),
        "augment": [
            {"view": v, "pipeline": p.spec}
            for v, p in zip(session.method.view_names(), session.pipelines)
        ],
        "config": session.cfg.to_dict(),
        "distributed": describe_world(session.cfg),
        "status": "running",
        "epochs_done": 0,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(session.device),
            "channels_last": session.cfg.channels_last,
            "amp": "bfloat16 autocast" if session.cfg.amp else "off",
        },
        "command": command or [],
    }


__all__ = [
    "Session",
    "build_session",
    "describe_run",
    "describe_world",
    "model_arguments",
    "resolve_device",
]
