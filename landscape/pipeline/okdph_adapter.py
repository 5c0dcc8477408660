"""Everything ``landscape`` uses of ``okdph``, in one place: run directories, models, datasets
and studies.

``okdph`` owns its formats (``okdph.run.RunDir`` reads run directories, ``okdph.sweep`` writes and
reads study.json) and its registries (models, datasets, with their import paths and entry
points); this module calls them and turns their errors into ``LandscapeError`` sentences that
speak landscape's flags. No other module of ``landscape`` imports ``okdph``
(``tests/test_layers.py`` checks it).
"""

from __future__ import annotations

import inspect
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.core.errors import LandscapeError
from okdph.config import ConfigError
from okdph.data import DataError, TensorDataset
from okdph.data import load_dataset as _load_dataset
from okdph.models import UnknownModelError, create, factory, parse_model_spec
from okdph.run import CheckpointInfo, RunDir, RunDirError
from okdph.sweep import read_study as _read_study


def read_run_info(path: Path) -> dict[str, Any]:
    """run.json of an okdph run directory, its format and version checked."""
    try:
        return RunDir(path).read_info()
    except RunDirError as err:
        raise LandscapeError(str(err)) from None


def run_checkpoints(path: Path) -> list[CheckpointInfo]:
    """The checkpoints of an okdph run directory, by epoch, with their sidecars (``{}`` when a
    sidecar is missing or damaged: the checkpoint itself decides)."""
    return RunDir(path).checkpoints()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of metrics.jsonl (torn and undecodable lines skipped)."""
    return RunDir(path).read_metrics()


def read_study(path: Path) -> dict[str, Any] | None:
    """study.json of a study directory, validated (``None`` when there is none)."""
    try:
        return _read_study(path)
    except ConfigError as err:
        raise LandscapeError(str(err)) from None


def parse_arch(text: str) -> dict[str, Any]:
    """``"resnet32"``, ``"cnn_digits:width=32,bn=true"`` or ``"pkg.mod:Net:width=32"`` ->
    ``{"name", "kwargs"}`` (okdph's rule for model specs)."""
    try:
        name, kwargs = parse_model_spec(text)
    except ValueError as err:
        raise LandscapeError(str(err).replace("model arguments", "--arch arguments")) from None
    return {"name": name, "kwargs": kwargs}


def build_model(arch: dict[str, Any]) -> nn.Module:
    """A fresh network ``{"name", "kwargs"}``: a registry name, an entry point of the
    ``okdph.models`` group, or an import path ``package.module:callable``."""
    try:
        return create(arch["name"], **arch.get("kwargs", {}))
    except (UnknownModelError, ValueError) as err:
        raise LandscapeError(str(err)) from None


def model_accepts(name: str, argument: str) -> bool:
    """Whether the model factory ``name`` takes the keyword ``argument`` (or any keyword)."""
    try:
        params = inspect.signature(factory(name)).parameters.values()
    except (UnknownModelError, ValueError, TypeError):
        return False  # an unknown model fails later, with its own sentence
    return any(p.name == argument or p.kind is p.VAR_KEYWORD for p in params)


@lru_cache(maxsize=4)
def _dataset_cpu(spec_json: str) -> TensorDataset:
    spec = json.loads(spec_json)
    try:
        return _load_dataset(spec["name"], "cpu", **spec.get("kwargs", {}))
    except DataError as err:
        # okdph's messages speak its --set syntax; say what landscape's flag is.
        text = (
            str(err)
            .replace("pass data.download=true or a valid data.root", "pass --data-root DIR")
            .replace("pass data.download=true to fetch", "pass --data-root DIR holding")
        )
        raise LandscapeError(text) from None


def load_dataset(spec: dict[str, Any], device: torch.device | str = "cpu") -> TensorDataset:
    """The dataset ``{"name", "kwargs"}`` on ``device`` (loaded once per process)."""
    return _dataset_cpu(json.dumps(spec, sort_keys=True, default=str)).to(device)


def num_classes(spec: dict[str, Any]) -> int:
    """The number of classes of a dataset, from the dataset itself."""
    return int(load_dataset(spec).num_classes)
