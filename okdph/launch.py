"""Sweeps on a cluster: each run of a study as a SLURM job through submitit (an optional extra).

``okdph sweep --launcher slurm --slurm partition=gpu,gpus_per_node=1,timeout_min=600`` submits
one job per unfinished run and waits for them. A job trains its run, or resumes it when the run
directory already holds a checkpoint; when SLURM preempts it or its time runs out, submitit
requeues it (:meth:`TrainJob.checkpoint`) and the new job resumes from the last checkpoint. With
``tasks_per_node`` > 1 every task joins one ``torch.distributed`` group (submitit exports the
rendezvous variables) and the run trains data-parallel, as under torchrun. ``--launcher local``
runs the same jobs as local processes (submitit's local executor), which is how this is tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from okdph.config import ConfigError, parse_value

# submitit's own names for what every executor understands; anything else is a SLURM option.
GENERIC = {"timeout_min", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "tasks_per_node"}


def parse_slurm(text: str) -> dict[str, Any]:
    """``key=value,...`` as submitit parameters (``partition`` -> ``slurm_partition``, ...)."""
    params: dict[str, Any] = {}
    for item in (p for p in text.split(",") if p.strip()):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--slurm entry {item!r} is not of the form key=value")
        name = key if key in GENERIC or key.startswith("slurm_") else f"slurm_{key}"
        params[name] = parse_value(value)
    return params


def _submitit() -> Any:
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
        from okdph.config import TrainConfig
        from okdph.distributed import init_from_env
        from okdph.sweep import run_state, train_or_resume

        submitit = _submitit()
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
        return _submitit().helpers.DelayedSubmission(TrainJob(self.config, self.path, self.command))


def executor(folder: Path, launcher: str, params: dict[str, Any]) -> Any:
    """A submitit executor: SLURM (``launcher="slurm"``) or local processes (``"local"``)."""
    submitit = _submitit()
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


__all__ = ["TrainJob", "executor", "parse_slurm", "submit_and_wait"]
