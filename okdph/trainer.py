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
from typing import Any

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
from okdph.config import ConfigError, TrainConfig
from okdph.distributed import World, current_world, sum_gradients, weights_digest
from okdph.evaluation import autocast, evaluate, to_memory_format
from okdph.methods import StepContext
from okdph.run import ReadOnlyRunDir, RunDir, RunDirError, check_creatable
from okdph.session import Session, build_session, describe_run, describe_world
from okdph.tracking import TrainingTracker, open_tensorboard


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


def epoch_rngs(
    seed: int, epoch: int, device: torch.device, num_views: int, rank: int = 0
) -> EpochStreams:
    """The independent random streams of one epoch (:class:`EpochStreams`). They are the same
    on every rank of a distributed run, but for the global generator (dropout masks), which
    each rank other than 0 seeds with its rank too."""

    def stream(*key: int) -> torch.Generator:
        return torch_stream(seed, epoch, device, *key)

    key = [seed, epoch, 3] + ([rank] if rank else [])
    global_seed = np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)
    torch.manual_seed(int(global_seed[0] >> 1))  # for any layer drawing from the global generator
    return EpochStreams(
        order=stream(0),
        views=[stream(1, i) for i in range(num_views)],
        method=np.random.default_rng(np.random.SeedSequence([seed, epoch, 2])),
    )


def _global_mean(world: World, share: float):
    """The function that turns a shard's batch mean into the global batch's (StepContext)."""
    if world.size == 1:
        return _identity
    return lambda t: world.sum(t * share)


def _identity(t: Tensor) -> Tensor:
    return t


def _progress(iterable, **kwargs):
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)


class Trainer:
    """Runs a session into a run directory."""

    def __init__(self, session: Session, run: RunDir, progress: bool = True, max_batches: int = 0):
        self.session = session
        self.run = run
        self.progress = progress
        self.max_batches = max_batches
        self.epoch = 0
        self.step = 0
        self.test_x = session.data.inputs("test")
        self.test_y = session.data.targets("test")
        self.last_lr = session.optimizer.param_groups[0]["lr"]
        self.tracker: TrainingTracker | None = None
        self.board: Any = None
        self.world = current_world()

    def save(self, metrics: dict[str, float]) -> None:
        if self.world.size > 1:
            self._check_ranks_agree()
        save_checkpoint(self.run, self.session, self.epoch, self.step, metrics)
        if self.session.cfg.keep_every > 1 and self.world.is_main:
            prune_checkpoints(self.run, self.session.cfg.keep_every)

    def _check_ranks_agree(self) -> None:
        method = self.session.method
        # Parameters and the method's own state (WML's weights) must agree; BatchNorm's running
        # statistics are per rank by design.
        shared = [*method.parameters(), *method.extra_state().values()]
        digest = weights_digest(shared).to(self.session.device)
        if not bool(self.world.sum(digest.clone()) == digest * self.world.size):
            raise RuntimeError(
                f"the ranks' weights disagree at epoch {self.epoch}; distributed training is not "
                "deterministic here (a method's state or a layer differs between ranks)"
            )

    def restore(self) -> None:
        """Continue from the last checkpoint of the run directory."""
        self.epoch, self.step = restore_checkpoint(self.run, self.session)

    # ---- loop -------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Every member's test metrics (rank 0 only: the other ranks return ``{}``)."""
        if not self.world.is_main:
            return {}
        cfg = self.session.cfg
        return evaluate(
            self.session.method,
            self.test_x,
            self.test_y,
            cfg.eval_batch_size,
            amp=cfg.amp,
            channels_last=cfg.channels_last,
        )

    def train_epoch(self) -> dict[str, float]:
        session = self.session
        cfg, data, method = session.cfg, session.data, session.method
        streams = epoch_rngs(
            cfg.seed, self.epoch, session.device, len(session.pipelines), self.world.rank
        )
        rng = streams.method
        method.start_epoch(self.epoch, rng)
        method.train()
        n = len(data.train_y)
        perm = torch.randperm(n, generator=streams.order, device=session.device)
        num_batches = math.ceil(n / cfg.batch_size)
        if self.max_batches:
            num_batches = min(num_batches, self.max_batches)
        sums: dict[str, Tensor] = {}
        seen: float = 0
        check_every = 1 if session.device.type == "cpu" else 25  # a finiteness check syncs the GPU
        bar = _progress(
            range(num_batches),
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=None if self.progress else True,
        )
        world = self.world
        for b in bar:
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x = data.to_unit(data.train_x[idx])
            y = data.train_y[idx]
            # Every rank augments the whole global batch (the same draws as one process), then
            # keeps its shard.
            part = world.shard(len(y))
            views = [
                to_memory_format(data.normalize(p(x, g))[part], cfg.channels_last)
                for p, g in zip(session.pipelines, streams.views, strict=True)
            ]
            y = y[part]
            lr = session.optimizer.param_groups[0]["lr"]
            share = len(y) / len(idx)
            ctx = StepContext(
                self.epoch,
                b,
                self.step,
                cfg.epochs,
                rng,
                lr,
                global_mean=_global_mean(world, share),
            )
            with autocast(session.device, cfg.amp):
                loss, terms = method.compute_loss(views, y, ctx)
            session.optimizer.zero_grad(set_to_none=True)
            (loss * share if world.size > 1 else loss).backward()
            sum_gradients(method.parameters(), world)
            method.before_step(ctx)
            session.optimizer.step()
            with autocast(session.device, cfg.amp):
                method.after_step(ctx)
            self.step += 1
            self.last_lr = lr
            if self.tracker is not None and self.tracker.due_after_step(self.step):
                self.track(self.epoch + (b + 1) / num_batches)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach() * len(y)
            seen += len(y)
            if (b + 1) % check_every == 0 or b + 1 == num_batches:
                self._check_finite(loss, terms, b)
        if world.size > 1:  # sample-weighted means over every rank's shards
            keys = sorted(sums)
            total = world.sum(
                torch.stack(
                    [sums[k].float() for k in keys]
                    + [torch.tensor(float(seen), device=session.device)]
                )
            )
            sums, seen = dict(zip(keys, total[:-1])), float(total[-1])
        return {f"train/{k}": (v / seen).item() for k, v in sums.items()}

    def training_batches(self, view: int) -> Iterator[Tensor]:
        """The whole training split once, in order, through view ``view``'s augmentation, drawn
        from a stream of its own (key 4): what a method's statistics pass sees (SWA's BatchNorm)."""
        session = self.session
        cfg, data = session.cfg, session.data
        gen = torch_stream(cfg.seed, self.epoch, session.device, 4, view)
        n = len(data.train_y)
        num_batches = math.ceil(n / cfg.batch_size)
        if self.max_batches:
            num_batches = min(num_batches, self.max_batches)
        for b in range(num_batches):
            x = data.to_unit(data.train_x[b * cfg.batch_size : (b + 1) * cfg.batch_size])
            yield to_memory_format(
                data.normalize(session.pipelines[view](x, gen)), cfg.channels_last
            )

    # ---- logging and tracking -----------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to metrics.jsonl (and TensorBoard when ``log.tensorboard``)."""
        self.run.append_metrics(record)
        if self.board is not None:
            for key, value in record.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    self.board.add_scalar(key, value, global_step=record["step"])
            self.board.flush()

    def track(self, epoch: float) -> None:
        """One curvature tracking point of every member, logged as its own metrics line."""
        assert self.tracker is not None
        start = time.perf_counter()
        record = self.tracker.point(self.step, self.last_lr)
        self.log(
            {
                "epoch": epoch,
                "step": self.step,
                **record,
                "time/track_s": time.perf_counter() - start,
            }
        )

    def open_logs(self) -> None:
        """Start the curvature tracker and TensorBoard writer the config asks for (once)."""
        cfg = self.session.cfg
        if cfg.track.enabled and self.tracker is None:
            self.tracker = TrainingTracker(self.session, self.run.path / "tracking.pt", self.world)
            self.run.update_info(tracking=self.tracker.describe())
        if cfg.log.tensorboard and self.board is None and self.world.is_main:
            self.board = open_tensorboard(self.run.path / "tensorboard")

    def _check_finite(self, loss: Tensor, terms: dict[str, Tensor], batch: int) -> None:
        finite = torch.isfinite(loss.detach()).all().float().reshape(1)
        if bool(self.world.sum(finite) == self.world.size):  # every rank stops together
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

    def students_ce(self, train_metrics: dict[str, float]) -> float | None:
        """The mean training cross-entropy over the epoch of the members that train as networks
        (``train/<member>/ce`` of role ``network``: students, peers, leader; not OKDPH's hybrid
        or SWA/EMA averages), the quantity ``stop_at_loss`` compares; ``None`` when none is
        logged."""
        method = self.session.method
        values = [
            train_metrics[f"train/{name}/ce"]
            for name in method.nets
            if method.member_role(name) == "network" and f"train/{name}/ce" in train_metrics
        ]
        return sum(values) / len(values) if values else None

    def fit(self, stop_at: int | None = None) -> dict[str, float]:
        """Train from ``self.epoch`` to the configured number of epochs (or to epoch ``stop_at``,
        leaving the run resumable, or to the epoch whose students' training cross-entropy falls
        below ``stop_at_loss``); returns the last test metrics.

        The test split is evaluated where ``cfg.evaluates_test`` says and at the stopping epoch,
        so the last checkpoint's sidecar always holds every member's test accuracy."""
        session = self.session
        cfg = session.cfg
        check_stop_rule(session)
        last = cfg.epochs if stop_at is None else min(stop_at, cfg.epochs)
        tested: dict[str, float] = {}  # the last evaluation's metrics
        metrics: dict[str, float]
        self.open_logs()
        fresh = self.world.broadcast_object(self.epoch == 0 and self.run.last_checkpoint() is None)
        if fresh:
            metrics = self.evaluate() if cfg.evaluates_test(0) else {}
            tested = metrics or tested
            self.log({"epoch": 0, "step": 0, **metrics})
            self.save(metrics)
            if self.tracker is not None:
                self.track(0)
        epochs = _progress(
            range(self.epoch, last),
            desc="training",
            initial=self.epoch,
            total=cfg.epochs,
            disable=None if self.progress else True,
        )
        stopped: dict[str, Any] | None = None
        try:
            for _ in epochs:
                start = time.perf_counter()
                own_lr = session.method.learning_rate(self.epoch, cfg.epochs, cfg.optim.lr)
                if own_lr is not None:
                    for group in session.optimizer.param_groups:
                        group["lr"] = own_lr
                lr = session.optimizer.param_groups[0]["lr"]
                train_metrics = self.train_epoch()
                session.method.after_epoch(self.epoch + 1, self.training_batches)
                session.scheduler.step()
                self.epoch += 1
                if cfg.stop_at_loss is not None:
                    ce = self.students_ce(train_metrics)
                    if ce is not None:
                        train_metrics["train/students_ce"] = ce
                        if ce < cfg.stop_at_loss and self.epoch < cfg.epochs:
                            stopped = {
                                "epoch": self.epoch,
                                "students_ce": ce,
                                "stop_at_loss": cfg.stop_at_loss,
                            }
                metrics = {}
                timing = {}
                if stopped or cfg.evaluates_test(self.epoch):
                    test_start = time.perf_counter()
                    metrics = self.evaluate()
                    tested = metrics or tested
                    timing["time/test_s"] = time.perf_counter() - test_start
                record = {
                    "epoch": self.epoch,
                    "step": self.step,
                    "lr": lr,
                    **train_metrics,
                    **metrics,
                    "time/epoch_s": time.perf_counter() - start,
                    **timing,
                }
                self.log(record)
                session.method.end_epoch(self.epoch)
                if self.tracker is not None and self.tracker.due_after_epoch(
                    self.epoch, cfg.epochs
                ):
                    self.track(self.epoch)
                if stopped or self.epoch % cfg.save_every == 0 or self.epoch == cfg.epochs:
                    self.save(metrics)
                    # One update: a run interrupted after its stopping checkpoint stays stopped.
                    extra = {"stopped_at_loss": stopped} if stopped else {}
                    self.run.update_info(epochs_done=self.epoch, **extra)
                if metrics:
                    best = max(v for k, v in metrics.items() if k.endswith("/test_acc"))
                    epochs.set_postfix(test_acc=f"{best:.3f}")
                if stopped:
                    break
        except TrainingDiverged:
            self.run.update_info(status="diverged")
            raise
        except KeyboardInterrupt:
            self.run.update_info(status="interrupted", epochs_done=self.epoch)
            raise
        except Exception as err:  # recorded, then re-raised: run.json must not say "running"
            self.run.update_info(status="failed", error=f"{type(err).__name__}: {err}")
            raise
        done = self.epoch == cfg.epochs or stopped is not None
        self.run.update_info(status="complete" if done else "stopped", epochs_done=self.epoch)
        return tested


def check_stop_rule(session: Session) -> None:
    """ConfigError (one sentence) when ``stop_at_loss`` is set for a method that logs no
    cross-entropy of its networks (``<member>/ce``), before anything is written."""
    if session.cfg.stop_at_loss is not None and not any(
        k.endswith("/ce") for k in session.method.loss_terms
    ):
        raise ConfigError(
            f"stop_at_loss needs a method that logs its networks' cross-entropy (<member>/ce); "
            f"{session.method.name!r} logs none"
        )


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
    world = current_world()
    run = RunDir(out) if world.is_main else ReadOnlyRunDir(out)
    check_creatable(run.path)
    # Rank 0 decides (the others would see what it writes): one verdict for every rank.
    taken = world.broadcast_object(run.exists() and not overwrite)
    if taken:
        raise RunDirError(
            f"{run.path} already holds a run; use --resume to continue it or "
            f"--overwrite to start again"
        )
    session = build_session(cfg)
    check_stop_rule(session)
    if world.is_main:
        if run.path.exists() and overwrite:
            clear_run(run)
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_info(describe_run(session, command))
    trainer = Trainer(session, run, progress, max_batches)
    metrics = trainer.fit()
    world.barrier()
    return run, metrics


def resume(
    path: str | Path, *, progress: bool = True, max_batches: int = 0, device: str | None = None
) -> tuple[RunDir, dict[str, float]]:
    """Continue the run in ``path`` from its last checkpoint (optionally on another device)."""
    world = current_world()
    run = RunDir(path) if world.is_main else ReadOnlyRunDir(path)
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
    if trainer.epoch >= cfg.epochs or info.get("stopped_at_loss"):  # nothing left to do
        last = run.last_checkpoint()
        return run, dict(last.sidecar.get("metrics", {})) if last else {}
    resumed = [*info.get("resumed_with", []), describe_world(cfg)["world_size"]]
    run.update_info(status="running", resumed_with=resumed)
    metrics = trainer.fit()
    world.barrier()
    return run, metrics


__all__ = [
    "EpochStreams",
    "Trainer",
    "TrainingDiverged",
    "check_stop_rule",
    "epoch_rngs",
    "resume",
    "torch_stream",
    "train",
]
