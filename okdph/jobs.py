"""One run of a study as a job: its state on disk, train-or-resume, its command line, and the
requeueable submitit job that runs it on a cluster.

:mod:`okdph.sweep` (the grid, study.json, in-process and subprocess runs) and :mod:`okdph.launch`
(the ``--slurm`` option) both build on this module and never import each other. submitit is an
optional extra, imported only when a job is submitted or run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from okdph.config import ConfigError, TrainConfig
from okdph.run import RunDir


def run_state(path: Path) -> str:
    """``"done"``, ``"resume"`` (a run with a checkpoint, not finished) or ``"new"``."""
    run = RunDir(path)
    if not run.exists():
        return "new"
    try:
        status = run.read_info().get("status")
    except Exception:  # an unreadable run.json: start again
        return "new"
    if status == "complete":
        return "done"
    return "resume" if run.last_checkpoint() is not None else "new"


def train_or_resume(
    path: Path, cfg: TrainConfig, command: list[str], state: str, progress: bool
) -> None:
    """Continue the run in ``path`` (``state="resume"``) or train it anew from ``cfg``."""
    from okdph import trainer

    if state == "resume":
        trainer.resume(path, progress=progress)
    else:
        trainer.train(cfg, path, overwrite=True, progress=progress, command=command)


def train_command(preset: str, overrides: Sequence[str], path: Path, state: str) -> list[str]:
    """The ``okdph train`` command line (``python -m okdph train ...``) of the run in ``path``:
    from ``preset`` with ``overrides`` into ``path`` (replacing what is there), or, for
    ``state="resume"``, continuing it."""
    base = [sys.executable, "-m", "okdph", "train", "--no-progress"]
    if state == "resume":
        return [*base, "--resume", str(path)]
    return [*base, "--preset", preset, "--set", *overrides, "--out", str(path), "--overwrite"]


def submitit_module() -> Any:
    """The submitit package (a ConfigError naming the extra when it is not installed)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "--launcher slurm needs submitit (pip install submitit, or the cluster extra)"
        ) from None
    return submitit


class TrainJob:
    """One run of a study, as a requeueable submitit job (``checkpoint`` resubmits it)."""

    def __init__(self, config: dict[str, Any], path: str, command: list[str]) -> None:
        self.config = config
        self.path = path
        self.command = command

    def __call__(self) -> str:
        from okdph.distributed import init_from_env

        submitit = submitit_module()
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one torch.distributed group over the job's tasks
            submitit.helpers.TorchDistributedEnvironment().export()
        init_from_env()
        path = Path(self.path)
        state = run_state(path)
        if state == "done":
            return "skipped (done)"
        train_or_resume(path, TrainConfig.from_dict(self.config), self.command, state, False)
        return "resumed" if state == "resume" else "trained"

    def checkpoint(self) -> Any:
        """Requeue on preemption or timeout; the new job resumes from the last checkpoint."""
        return submitit_module().helpers.DelayedSubmission(
            TrainJob(self.config, self.path, self.command)
        )


def executor(folder: Path, launcher: str, params: dict[str, Any]) -> Any:
    """A submitit executor: SLURM (``launcher="slurm"``) or local processes (``"local"``)."""
    submitit = submitit_module()
    ex = submitit.AutoExecutor(folder=folder, cluster="local" if launcher == "local" else "slurm")
    if launcher == "local":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    try:
        ex.update_parameters(**params)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--slurm: {err}") from None
    return ex


def submit_and_wait(
    jobs: list[tuple[str, TrainJob]],
    folder: Path,
    launcher: str,
    params: dict[str, Any],
    log: Callable[[str], None],
    poll_s: float = 2.0,
) -> dict[str, str]:
    """Submit every ``(name, job)`` and wait for all; returns ``{name: outcome}``."""
    ex = executor(folder, launcher, params)
    submitted = {name: ex.submit(job) for name, job in jobs}
    for name, job in submitted.items():
        log(f"{name}: submitted as job {job.job_id} (logs in {folder})")
    outcomes: dict[str, str] = {}
    started = time.perf_counter()
    while len(outcomes) < len(submitted):
        for name, job in submitted.items():
            if name in outcomes or not job.done():
                continue
            try:
                outcomes[name] = str(job.result())
            except Exception as err:  # the job's own traceback is in its log folder
                outcomes[name] = f"failed ({type(err).__name__}; see {folder})"
            elapsed = (time.perf_counter() - started) / 60
            log(f"[{len(outcomes)}/{len(submitted)}] {name}: {outcomes[name]} ({elapsed:.1f} min)")
        time.sleep(poll_s)
    return outcomes


__all__ = [
    "TrainJob",
    "executor",
    "run_state",
    "submit_and_wait",
    "submitit_module",
    "train_command",
    "train_or_resume",
]
