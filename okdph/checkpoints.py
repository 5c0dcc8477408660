"""Checkpoint I/O of a training run: save a session's state at an epoch, restore the last one,
and clear what an overwritten run wrote."""

from __future__ import annotations

import shutil

from okdph.run import RunDir, RunDirError, load_checkpoint
from okdph.session import Session


def save_checkpoint(
    run: RunDir, session: Session, epoch: int, step: int, metrics: dict[str, float]
) -> None:
    """Save every member, the method's extra state, optimiser and schedule as epoch ``epoch``'s
    checkpoint of ``run`` (atomically; its sidecar JSON holds the step, members and metrics)."""
    states = session.method.checkpoint_states()
    payload = {
        "step": step,
        "models": states,
        "method_state": session.method.extra_state(),
        "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict(),
        "metrics": metrics,
        "config": session.cfg.to_dict(),
    }
    run.save_checkpoint(epoch, payload, {"step": step, "members": list(states), "metrics": metrics})


def prune_checkpoints(run: RunDir, keep_every: int) -> list[int]:
    """Remove every checkpoint but the last and those of epochs divisible by ``keep_every``;
    returns the epochs removed. Only the epoch decides, never a metric (no test-set selection)."""
    ckpts = run.checkpoints()
    removed = []
    for ckpt in ckpts[:-1]:
        if ckpt.epoch % keep_every:
            ckpt.path.with_suffix(".json").unlink(missing_ok=True)  # sidecar first: never dangling
            ckpt.path.unlink(missing_ok=True)
            removed.append(ckpt.epoch)
    return removed


def restore_checkpoint(run: RunDir, session: Session) -> tuple[int, int]:
    """Load the last checkpoint of ``run`` into the session; returns its ``(epoch, step)``."""
    last = run.last_checkpoint()
    if last is None:
        raise RunDirError(f"{run.path} has no checkpoint to resume from")
    ckpt = load_checkpoint(last.path, map_location=session.device)
    method = session.method
    try:
        for name, net in method.nets.items():
            net.load_state_dict(ckpt["models"][name])
        method.load_extra_state(ckpt["method_state"])
        session.optimizer.load_state_dict(ckpt["optimizer"])
        session.scheduler.load_state_dict(ckpt["scheduler"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise RunDirError(f"{last.path} does not match this run's configuration ({err})") from None
    epoch = int(ckpt["epoch"])
    run.truncate_metrics(epoch)
    return epoch, int(ckpt["step"])


def clear_run(run: RunDir) -> None:
    """Remove what a previous run wrote, its analyses included (they describe the old weights);
    unknown files are left alone."""
    for ckpt in run.checkpoints():
        ckpt.path.unlink(missing_ok=True)
        ckpt.path.with_suffix(".json").unlink(missing_ok=True)
    run.metrics_path.unlink(missing_ok=True)
    run.run_json.unlink(missing_ok=True)
    shutil.rmtree(run.path / "analysis", ignore_errors=True)


__all__ = ["clear_run", "prune_checkpoints", "restore_checkpoint", "save_checkpoint"]
