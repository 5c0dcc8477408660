"""The training loop: epochs of batches, per-epoch evaluation and metrics, checkpoints, resume.

The session it runs is built in :mod:`okdph.session`, evaluation lives in :mod:`okdph.evaluation`
and checkpoint I/O in :mod:`okdph.checkpoints`. The loop is method-agnostic; a method supplies the joint loss of a batch and its between-step
hooks. Randomness (shuffling, augmentation, HWM coefficients, global torch RNG) is reseeded from
``(seed, epoch)`` at the start of every epoch, so resuming from an epoch boundary reproduces an
uninterrupted run exactly on the CPU.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from okdph.checkpoints import (
    clear_run,
    prune_checkpoints,
    restore_checkpoint,
    save_checkpoint,
)
from okdph.config import TrainConfig
from okdph.evaluation import autocast, evaluate, to_memory_format
from okdph.methods import StepContext
from okdph.run import RunDir, RunDirError
from okdph.session import Session, build_session, describe_run


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message names the epoch and the member."""


@dataclass
class EpochStreams:
    """One epoch's random streams, each seeded from ``(seed, epoch, stream)`` alone.

    ``order`` shuffles the data, ``views[i]`` draws view ``i``'s augmentation and ``method`` is
    the method's own randomness (the HWM's coefficients ...). Being separate, the batches and
    the views of student ``i`` are the same under every method with the same seed, whatever
    number of views or random choices the method makes: runs pair by seed.
    """

    order: torch.Generator
    views: list[torch.Generator]
    method: np.random.Generator


def torch_stream(seed: int, epoch: int, device: torch.device, *key: int) -> torch.Generator:
    """A torch generator seeded from ``(seed, epoch, *key)`` alone."""
    state = np.random.SeedSequence([seed, epoch, *key]).generate_state(1, dtype=np.uint64)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state[0] >> 1))
    return gen


def epoch_rngs(seed: int, epoch: int, device: torch.device, num_views: int) -> EpochStreams:
    """The independent random streams of one epoch (:class:`EpochStreams`)."""

    def stream(*key: int) -> torch.Generator:
        return torch_stream(seed, epoch, device, *key)

    global_seed = np.random.SeedSequence([seed, epoch, 3]).generate_state(1, dtype=np.uint64)
    torch.manual_seed(int(global_seed[0] >> 1))  # for any layer drawing from the global generator
    return EpochStreams(
        order=stream(0),
        views=[stream(1, i) for i in range(num_views)],
        method=np.random.default_rng(np.random.SeedSequence([seed, epoch, 2])),
    )


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

    def save(self, metrics: dict[str, float]) -> None:
        save_checkpoint(self.run, self.s, self.epoch, self.step, metrics)
        if self.s.cfg.keep_every > 1:
            prune_checkpoints(self.run, self.s.cfg.keep_every)

    def restore(self) -> None:
        """Continue from the last checkpoint of the run directory."""
        self.epoch, self.step = restore_checkpoint(self.run, self.s)

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
        streams = epoch_rngs(cfg.seed, self.epoch, s.device, len(s.pipelines))
        rng = streams.method
        method.start_epoch(self.epoch, rng)
        method.train()
        n = len(data.train_y)
        perm = torch.randperm(n, generator=streams.order, device=s.device)
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
                to_memory_format(data.normalize(p(x, g)), cfg.channels_last)
                for p, g in zip(s.pipelines, streams.views, strict=True)
            ]
            lr = s.optimizer.param_groups[0]["lr"]
            ctx = StepContext(self.epoch, b, self.step, cfg.epochs, rng, lr)
            with autocast(s.device, cfg.amp):
                loss, terms = method.compute_loss(views, y, ctx)
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            method.before_step(ctx)
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

    def training_batches(self, view: int) -> Iterator[Tensor]:
        """The whole training split once, in order, through view ``view``'s augmentation, drawn
        from a stream of its own (key 4): what a method's statistics pass sees (SWA's BatchNorm)."""
        s = self.s
        cfg, data = s.cfg, s.data
        gen = torch_stream(cfg.seed, self.epoch, s.device, 4, view)
        n = len(data.train_y)
        num_batches = math.ceil(n / cfg.batch_size)
        if self.max_batches:
            num_batches = min(num_batches, self.max_batches)
        for b in range(num_batches):
            x = data.to_unit(data.train_x[b * cfg.batch_size : (b + 1) * cfg.batch_size])
            yield to_memory_format(data.normalize(s.pipelines[view](x, gen)), cfg.channels_last)

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
                own_lr = s.method.learning_rate(self.epoch, cfg.epochs, cfg.optim.lr)
                if own_lr is not None:
                    for group in s.optimizer.param_groups:
                        group["lr"] = own_lr
                lr = s.optimizer.param_groups[0]["lr"]
                train_metrics = self.train_epoch()
                s.method.after_epoch(self.epoch + 1, self.training_batches)
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
                s.method.end_epoch(self.epoch)
                if self.epoch % cfg.save_every == 0 or self.epoch == cfg.epochs:
                    self.save(metrics)
                    self.run.update_info(epochs_done=self.epoch)
                best = max((v for k, v in metrics.items() if k.endswith("/test_acc")), default=0.0)
                epochs.set_postfix(best_test_acc=f"{best:.3f}")
        except TrainingDiverged:
            self.run.update_info(status="diverged")
            raise
        except KeyboardInterrupt:
            self.run.update_info(status="interrupted", epochs_done=self.epoch)
            raise
        except Exception as err:  # recorded, then re-raised: run.json must not say "running"
            self.run.update_info(status="failed", error=f"{type(err).__name__}: {err}")
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
        clear_run(run)
    trainer = Trainer(session, run, progress, max_batches)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_info(describe_run(session, command))
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


__all__ = [
    "EpochStreams",
    "Trainer",
    "TrainingDiverged",
    "epoch_rngs",
    "resume",
    "torch_stream",
    "train",
]
