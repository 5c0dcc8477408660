"""Sweeps on a cluster: each run of a study as a SLURM job through submitit (an optional extra).

``okdph sweep --launcher slurm --slurm partition=gpu,gpus_per_node=1,timeout_min=600`` submits
one job per unfinished run and waits for them. A job trains its run, or resumes it when the run
directory already holds a checkpoint; when SLURM preempts it or its time runs out, submitit
requeues it (:meth:`TrainJob.checkpoint`) and the new job resumes from the last checkpoint. With
``tasks_per_node`` > 1 every task joins one ``torch.distributed`` group (submitit exports the
rendezvous variables) and the run trains data-parallel, as under torchrun. ``--launcher local``
runs the same jobs as local processes (submitit's local executor), which is how this is tested.

The job itself and its submission live in :mod:`okdph.jobs` (shared with :mod:`okdph.sweep`, which
this module does not import); this module reads the ``--slurm`` option and re-exports them.
"""

from __future__ import annotations

from typing import Any

from okdph.config import ConfigError, parse_value
from okdph.jobs import TrainJob, executor, submit_and_wait

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


__all__ = ["TrainJob", "executor", "parse_slurm", "submit_and_wait"]
