"""The training loop: epochs of batches, evaluation, metrics, checkpoints and resume.

The loop is method-agnostic; a method supplies the joint loss of a batch and its between-step
hooks. Randomness (shuffling, augmentation, HWM coefficients, global torch RNG) is reseeded from
``(seed, epoch)`` at the start of every epoch, so resuming from an epoch boundary reproduces an
uninterrupted run exactly on the CPU.
"""

from __future__ import annotations

import inspect
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from okdph import models
from okdph.augment import Pipeline, build_pipeline
from okdph.config import ConfigError, TrainConfig
from okdph.data import TensorDataset, load_dataset
from okdph.methods import Method, StepContext, build_method
from okdph.run import RunDir, RunDirError, load_checkpoint


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message names the epoch and the member."""


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
    """The model's keyword arguments: the config's, plus what the data implies (classes, shape)."""
    factory_params = inspect.signature(models.registry.factory(cfg.model)).parameters
    implied = {"num_classes": data.num_classes}
    shape = data.input_shape
    if "input_dim" in factory_params:
        implied["input_dim"] = int(np.prod(shape))
    if "length" in factory_params and data.kind == "signal":
        implied["length"] = shape[-1]
    if "in_channels" in factory_params and data.kind == "image":
        implied["in_channels"] = shape[0]
    return {**implied, **cfg.model_args}


def epoch_rngs(
    seed: int, epoch: int, device: torch.device
) -> tuple[torch.Generator, np.random.Generator]:
    """Independent generators for one epoch: torch (shuffle, augmentation) and numpy (method)."""
    seq = np.random.SeedSequence([seed, epoch])
    torch_seed, numpy_seed, global_seed = (
        int(s) for s in seq.generate_state(3, dtype=np.uint64) >> 1
    )
    torch.manual_seed(global_seed)  # for any layer that draws from the global generator
    gen = torch.Generator(device=device)
    gen.manual_seed(torch_seed)
    return gen, np.random.default_rng(numpy_seed)


def build_session(cfg: TrainConfig) -> Session:
    """Load the data and build the method, optimiser, schedule and views for ``cfg``."""
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.data, device, **cfg.data_args)
    kwargs = model_arguments(cfg, data)
    torch.manual_seed(cfg.seed)
    method = build_method(
        cfg.method,
        cfg.method_args,
        # Overrides let a method build members that differ from the run's architecture (WML's
        # pruned heads); the method reports them through member_arch.
        lambda **overrides: models.create(cfg.model, **{**kwargs, **overrides}),
        cfg.num_students,
        cfg.init,
    ).to(device)
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    specs = list(cfg.augment)
    if len(specs) == 1:
        specs = specs * method.num_views
    if len(specs) != method.num_views:
        raise ConfigError(
            f"augment lists {len(specs)} pipelines but {cfg.method} with {cfg.num_students} students "
            f"needs 1 or {method.num_views} (one per view: {', '.join(method_view_names(method))})"
        )
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
        {"name": cfg.model, "kwargs": kwargs},
    )


def method_view_names(method: Method) -> list[str]:
    return method.view_names()


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bfloat16 autocast on ``device`` when ``enabled`` (a no-op context otherwise)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def to_memory_format(x: Tensor, channels_last: bool) -> Tensor:
    """``x`` in channels-last layout when asked and it is an image batch, else unchanged."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(
    method: Method,
    x: Tensor,
    y: Tensor,
    batch_size: int = 1024,
    amp: bool = False,
    channels_last: bool = False,
) -> dict[str, float]:
    """Test accuracy (fraction) and mean cross-entropy of every member and the logit ensemble."""
    was_training = method.training
    method.eval()
    forwards = method.eval_forwards()
    ensemble = method.ensemble_members()
    loss = {name: 0.0 for name in [*forwards, "ensemble"]}
    correct = dict.fromkeys(loss, 0)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        xb = to_memory_format(xb, channels_last)
        with autocast(xb.device, amp):
            logits = {name: fn(xb) for name, fn in forwards.items()}
        logits["ensemble"] = torch.stack([logits[n] for n in ensemble]).mean(0)
        for name, z in logits.items():
            loss[name] += F.cross_entropy(z.float(), yb, reduction="sum").item()
            correct[name] += (z.argmax(1) == yb).sum().item()
    method.train(was_training)
    n = len(y)
    out = {}
    for name in loss:
        out[f"{name}/test_acc"] = correct[name] / n
        out[f"{name}/test_loss"] = loss[name] / n
    return out


def _progress(iterable, **kwargs):
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)


class Trainer:
    """Runs a session into a run directory."""

    def __init__(self, session: Session, run: RunDir, progress: bool = True, max_batches: int = 0):
        self.s = session
        self.run = run
        self.progress = progress
        self.max_batches = max_batches
        self.epoch = 0
        self.step = 0
        self.test_x = session.data.inputs("test")
        self.test_y = session.data.targets("test")

    # ---- state ------------------------------------------------------------------------------
    def run_info(self, command: list[str] | None = None) -> dict[str, Any]:
        s = self.s
        data_info = {
            "name": s.cfg.data,
            "kwargs": dict(s.cfg.data_args),
            "kind": s.data.kind,
            "num_classes": s.data.num_classes,
            "input_shape": list(s.data.input_shape),
            "normalization": {
                "scale": s.data.scale,
                "mean": list(s.data.mean),
                "std": list(s.data.std),
            },
            **s.data.meta,
        }
        members = {
            name: {
                "arch": s.method.member_arch(name, s.arch),
                "role": "hybrid" if name == "hybrid" else "network",
            }
            for name in s.method.checkpoint_states()
        }
        return {
            "method": s.method.describe(),
            "arch": s.arch,
            "data": data_info,
            "members": members,
            "num_students": s.cfg.num_students,
            "init": s.cfg.init if s.cfg.init != "auto" else s.method.default_init,
            "augment": [
                {"view": v, "pipeline": p.spec}
                for v, p in zip(method_view_names(s.method), s.pipelines)
            ],
            "config": s.cfg.to_dict(),
            "status": "running",
            "epochs_done": 0,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "device": str(s.device),
                "channels_last": s.cfg.channels_last,
                "amp": "bfloat16 autocast" if s.cfg.amp else "off",
            },
            "command": command or [],
        }

    def save(self, metrics: dict[str, float]) -> None:
        s = self.s
        states = s.method.checkpoint_states()
        payload = {
            "step": self.step,
            "models": states,
            "method_state": s.method.extra_state(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "metrics": metrics,
            "config": s.cfg.to_dict(),
        }
        self.run.save_checkpoint(
            self.epoch, payload, {"step": self.step, "members": list(states), "metrics": metrics}
        )

    def restore(self) -> None:
        """Load the last checkpoint of the run directory into the session."""
        last = self.run.last_checkpoint()
        if last is None:
            raise RunDirError(f"{self.run.path} has no checkpoint to resume from")
        ckpt = load_checkpoint(last.path, map_location=self.s.device)
        method = self.s.method
        try:
            for name, net in method.nets.items():
                net.load_state_dict(ckpt["models"][name])
            method.load_extra_state(ckpt["method_state"])
            self.s.optimizer.load_state_dict(ckpt["optimizer"])
            self.s.scheduler.load_state_dict(ckpt["scheduler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise RunDirError(
                f"{last.path} does not match this run's configuration ({err})"
            ) from None
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.run.truncate_metrics(self.epoch)

    # ---- loop -------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        cfg = self.s.cfg
        return evaluate(
            self.s.method,
            self.test_x,
            self.test_y,
            cfg.eval_batch_size,
            amp=cfg.amp,
            channels_last=cfg.channels_last,
        )

    def train_epoch(self) -> dict[str, float]:
        s = self.s
        cfg, data, method = s.cfg, s.data, s.method
        gen, rng = epoch_rngs(cfg.seed, self.epoch, s.device)
        method.start_epoch(self.epoch, rng)
        method.train()
        n = len(data.train_y)
        perm = torch.randperm(n, generator=gen, device=s.device)
        num_batches = math.ceil(n / cfg.batch_size)
        if self.max_batches:
            num_batches = min(num_batches, self.max_batches)
        sums: dict[str, Tensor] = {}
        seen = 0
        check_every = 1 if s.device.type == "cpu" else 25  # a finiteness check syncs the GPU
        bar = _progress(
            range(num_batches),
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=None if self.progress else True,
        )
        for b in bar:
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x = data.to_unit(data.train_x[idx])
            y = data.train_y[idx]
            views = [
                to_memory_format(data.normalize(p(x, gen)), cfg.channels_last) for p in s.pipelines
            ]
            lr = s.optimizer.param_groups[0]["lr"]
            ctx = StepContext(self.epoch, b, self.step, cfg.epochs, rng, lr)
            with autocast(s.device, cfg.amp):
                loss, terms = method.compute_loss(views, y, ctx)
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            s.optimizer.step()
            with autocast(s.device, cfg.amp):
                method.after_step(ctx)
            self.step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach() * len(y)
            seen += len(y)
            if (b + 1) % check_every == 0 or b + 1 == num_batches:
                self._check_finite(loss, terms, b)
        return {f"train/{k}": (v / seen).item() for k, v in sums.items()}

    def _check_finite(self, loss: Tensor, terms: dict[str, Tensor], batch: int) -> None:
        if bool(torch.isfinite(loss).all()):
            return
        bad = [
            k.rsplit("/", 1)[0]
            for k, v in terms.items()
            if k.endswith("/loss") and not bool(torch.isfinite(v).all())
        ] or ["the joint loss"]
        value = next((terms[f"{b}/loss"] for b in bad if f"{b}/loss" in terms), loss)
        last = self.run.last_checkpoint()
        where = f"; the last good checkpoint is {last.path}" if last else ""
        raise TrainingDiverged(
            f"the loss of {bad[0]} became {value.item()} in epoch {self.epoch + 1} "
            f"(batch {batch + 1}){where}"
        )

    def fit(self, stop_at: int | None = None) -> dict[str, float]:
        """Train from ``self.epoch`` to the configured number of epochs (or to epoch ``stop_at``,
        leaving the run resumable); returns the last test metrics."""
        s = self.s
        cfg = s.cfg
        last = cfg.epochs if stop_at is None else min(stop_at, cfg.epochs)
        metrics: dict[str, float] = {}
        if self.epoch == 0 and self.run.last_checkpoint() is None:
            metrics = self.evaluate()
            self.run.append_metrics({"epoch": 0, "step": 0, **metrics})
            self.save(metrics)
        epochs = _progress(
            range(self.epoch, last),
            desc="training",
            initial=self.epoch,
            total=cfg.epochs,
            disable=None if self.progress else True,
        )
        try:
            for _ in epochs:
                start = time.perf_counter()
                lr = s.optimizer.param_groups[0]["lr"]
                train_metrics = self.train_epoch()
                s.scheduler.step()
                self.epoch += 1
                metrics = self.evaluate()
                record = {
                    "epoch": self.epoch,
                    "step": self.step,
                    "lr": lr,
                    **train_metrics,
                    **metrics,
                    "time/epoch_s": time.perf_counter() - start,
                }
                self.run.append_metrics(record)
                if self.epoch % cfg.save_every == 0 or self.epoch == cfg.epochs:
                    self.save(metrics)
                    self.run.update_info(epochs_done=self.epoch)
                best = max((v for k, v in metrics.items() if k.endswith("/test_acc")), default=0.0)
                epochs.set_postfix(best_test_acc=f"{best:.3f}")
        except TrainingDiverged:
            self.run.update_info(status="diverged")
            raise
        self.run.update_info(
            status="complete" if self.epoch == cfg.epochs else "stopped", epochs_done=self.epoch
        )
        return metrics


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    max_batches: int = 0,
    command: list[str] | None = None,
) -> tuple[RunDir, dict[str, float]]:
    """Train a new run into ``out``; returns the run directory and the final test metrics."""
    run = RunDir(out)
    if run.exists() and not overwrite:
        raise RunDirError(
            f"{run.path} already holds a run; use --resume to continue it or "
            f"--overwrite to start again"
        )
    session = build_session(cfg)
    if run.path.exists() and overwrite:
        _clear_run(run)
    trainer = Trainer(session, run, progress, max_batches)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_info(trainer.run_info(command))
    return run, trainer.fit()


def resume(
    path: str | Path, *, progress: bool = True, max_batches: int = 0, device: str | None = None
) -> tuple[RunDir, dict[str, float]]:
    """Continue the run in ``path`` from its last checkpoint (optionally on another device)."""
    run = RunDir(path)
    info = run.read_info()
    try:
        cfg = TrainConfig.from_dict(info["config"])
    except (KeyError, AttributeError, TypeError) as err:
        raise RunDirError(f"{run.run_json} holds no usable config ({err})") from None
    if device:
        cfg.device = device
    session = build_session(cfg)
    trainer = Trainer(session, run, progress, max_batches)
    trainer.restore()
    if trainer.epoch >= cfg.epochs:  # nothing left to do
        last = run.last_checkpoint()
        return run, dict(last.sidecar.get("metrics", {})) if last else {}
    run.update_info(status="running")
    return run, trainer.fit()


def _clear_run(run: RunDir) -> None:
    """Remove what a previous run wrote, its analyses included (they describe the old weights);
    unknown files are left alone."""
    for ckpt in run.checkpoints():
        ckpt.path.unlink(missing_ok=True)
        ckpt.path.with_suffix(".json").unlink(missing_ok=True)
    run.metrics_path.unlink(missing_ok=True)
    run.run_json.unlink(missing_ok=True)
    shutil.rmtree(run.path / "analysis", ignore_errors=True)


__all__ = ["Session", "Trainer", "TrainingDiverged", "build_session", "evaluate", "resume", "train"]
