"""Curvature tracking during training: the trainer's side.

Every tracking point (``track.every`` epochs, ``track.points`` points per run or ``track.steps``
steps; :class:`okdph.config.TrackConfig`), each checkpoint member is rebuilt from its state (a
copy: the training networks, their buffers and every random generator are untouched, so a tracked
run trains exactly like an untracked one) and handed to the curvature tracker, which lives in the
analysis package and is found through the ``okdph.trackers`` entry point (``curvature``), as
okdph never imports landscape. The tracker returns each member's top Hessian eigenvalue (and
trace); this module adds the optimiser's stability threshold and logs ``curv/<member>/<name>``.

The threshold is the full-batch stability limit of the optimiser that trains the member, on a
quadratic with the member's top curvature: heavy-ball SGD as torch implements it (dampening 0)
diverges once ``lr * lambda > 2 (1 + mu)``, Nesterov once ``lr * lambda > (2 + 2 mu) / (1 + 2 mu)``.
With weight decay the objective's Hessian is the cross-entropy's plus ``wd``, so the logged
``threshold`` is the limit minus ``wd``, on the scale of the tracked cross-entropy eigenvalue. It
is the reference line of Cohen et al. (2021), not a prediction for minibatch SGD. Members no
optimiser trains (OKDPH's hybrid, SWA/EMA averages) have none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from okdph import models
from okdph.config import ConfigError, TrackConfig
from okdph.distributed import World
from okdph.plugins import EntryPointGroup
from okdph.run import atomic_torch_save

ENTRY_POINT_GROUP = "okdph.trackers"
TRACKERS = EntryPointGroup(ENTRY_POINT_GROUP, "tracker", error=ConfigError)


class Tracker(Protocol):
    """What the curvature tracker provides (``landscape.pipeline.track.CurvatureTracker``)."""

    def measure(self, members: dict[str, nn.Module], point: int) -> dict[str, dict[str, float]]:
        """Per member: ``lambda_max``, its ``lambda_max_bound``, ``converged``, ``hvp`` (and
        ``trace``, ``trace_stderr``) at tracking point number ``point``."""
        ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...

    def describe(self) -> dict[str, Any]: ...


def stability_threshold(lr: float, momentum: float, nesterov: bool, weight_decay: float) -> float:
    """The largest cross-entropy Hessian eigenvalue at which full-batch SGD with these settings is
    stable on a quadratic, in loss per squared parameter unit (see the module docstring)."""
    if nesterov:
        limit = (2 + 2 * momentum) / (lr * (1 + 2 * momentum))
    else:
        limit = 2 * (1 + momentum) / lr
    return limit - weight_decay


def load_tracker_factory() -> Callable[..., Tracker]:
    """The ``curvature`` tracker registered under the ``okdph.trackers`` entry point."""
    found = TRACKERS.load("curvature")
    if found is None:
        raise ConfigError(
            "curvature tracking needs the landscape package installed (pip install -e . in this "
            "repository registers it)"
        )
    return found


def tracking_subset(num_train: int, samples: int, seed: int) -> np.ndarray:
    """The fixed training subset of a run, from ``(seed, 5)`` alone (sorted indices)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    return np.sort(rng.choice(num_train, size=min(samples, num_train), replace=False))


class TrainingTracker:
    """Rebuilds the members, asks the tracker, adds thresholds and keeps the warm-start state."""

    def __init__(self, session: Any, state_path: Path, world: World | None = None) -> None:
        self.session = session
        self.world = world or World()
        cfg: TrackConfig = session.cfg.track
        self.config = cfg
        data = session.data
        idx = torch.as_tensor(tracking_subset(len(data.train_y), cfg.samples, session.cfg.seed))
        idx = idx.to(data.train_y.device)
        x, y = data.inputs("train", idx), data.targets("train", idx)
        size = session.cfg.batch_size
        batches = []
        for start in range(0, len(y), size):  # global batches of the training size, sharded
            part = self.world.shard(len(y[start : start + size]))
            batches.append((x[start : start + size][part], y[start : start + size][part]))
        factory = load_tracker_factory()
        self.tracker = factory(batches=batches, config=cfg, seed=session.cfg.seed)
        self.state_path = state_path
        if state_path.exists():
            self.tracker.load_state_dict(torch.load(state_path, weights_only=True))
        self._modules: dict[str, nn.Module] = {}

    def due_after_epoch(self, epochs_done: int, epochs: int) -> bool:
        every = self.config.epoch_interval(epochs)
        return bool(every) and (epochs_done % every == 0 or epochs_done == epochs)

    def due_after_step(self, steps_done: int) -> bool:
        return bool(self.config.steps) and steps_done % self.config.steps == 0

    def _members(self) -> dict[str, nn.Module]:
        method = self.session.method
        out = {}
        for name, state in method.checkpoint_states().items():
            if name not in self._modules:
                arch = method.member_arch(name, self.session.arch)
                self._modules[name] = models.create(arch["name"], **arch["kwargs"]).to(
                    self.session.device
                )
            net = self._modules[name]
            net.load_state_dict(state)
            out[name] = net
        return out

    def point(self, point: int, lr: float) -> dict[str, float]:
        """One tracking point: ``curv/<member>/...`` metrics, warm-start state saved."""
        devices = [self.session.device] if self.session.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            measured = self.tracker.measure(self._members(), point)
        o = self.session.cfg.optim
        threshold = stability_threshold(lr, o.momentum, o.nesterov, o.weight_decay)
        record: dict[str, float] = {}
        for member, values in measured.items():
            for key, value in values.items():
                record[f"curv/{member}/{key}"] = value
            if self.session.method.member_role(member) == "network":
                record[f"curv/{member}/threshold"] = threshold
        record["curv/lr"] = lr
        if self.world.is_main:
            state = {k: v.detach().cpu() for k, v in self.tracker.state_dict().items()}
            atomic_torch_save(self.state_path, state)
        return record

    def describe(self) -> dict[str, Any]:
        """What run.json records: the settings, the loss and the threshold's definition."""
        return {
            **self.tracker.describe(),
            "threshold": (
                "full-batch stability limit of the member's SGD at the lr of the last step: "
                "2 (1 + momentum) / lr (Nesterov: (2 + 2 momentum) / (lr (1 + 2 momentum))) "
                "minus weight_decay, on the cross-entropy's scale; none for untrained members"
            ),
        }


def open_tensorboard(path: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` logging to ``path`` (``log.tensorboard=true``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "log.tensorboard=true needs the tensorboard package (pip install tensorboard, or the "
            "tensorboard extra of this package)"
        ) from None
    return SummaryWriter(log_dir=str(path))
