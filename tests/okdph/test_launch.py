"""Sweeps through submitit (its local executor stands for SLURM): every run trained as a job, a
preempted job requeued and resumed from its last checkpoint, the --slurm option parsed."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from okdph.cli import main as okdph
from okdph.config import ConfigError, apply_overrides
from okdph.launch import TrainJob, executor, parse_slurm
from okdph.presets import preset_config

pytest.importorskip("submitit")
TINY = ["epochs=2", "data.train_subset=128", "model.width=4", "batch_size=64"]


def test_slurm_options_become_submitit_parameters():
    params = parse_slurm("partition=gpu,gpus_per_node=2,timeout_min=600,qos=high")
    assert params == {
        "slurm_partition": "gpu",
        "gpus_per_node": 2,
        "timeout_min": 600,
        "slurm_qos": "high",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_slurm("partition")


@pytest.mark.slow
def test_a_local_launcher_sweep_trains_every_run_as_a_job(tmp_path, capsys):
    argv = ["sweep", "--preset", "demo", "--methods", "independent", "--seeds", "0,1"]
    argv += ["--set", *TINY, "--launcher", "local", "--slurm", "timeout_min=10"]
    assert okdph([*argv, "--out", str(tmp_path / "s")]) == 0
    for seed in (0, 1):
        info = json.loads((tmp_path / "s" / f"independent-s{seed}" / "run.json").read_text())
        assert info["status"] == "complete"
    assert "submitted as job" in capsys.readouterr().err
    assert okdph([*argv, "--out", str(tmp_path / "s")]) == 0  # nothing left: no job
    assert "2 done, 0 to train" in capsys.readouterr().err


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    cfg = apply_overrides(
        preset_config("demo"), ["epochs=40", "data.train_subset=256", "model.width=8"]
    )
    path = tmp_path / "run"
    job = executor(tmp_path / "logs", "local", {"timeout_min": 10}).submit(
        TrainJob(cfg.to_dict(), str(path), [])
    )
    deadline = time.time() + 120
    while not (path / "checkpoints" / "epoch_0003.pt").exists():
        assert time.time() < deadline and not job.done(), "the job did not start training"
        time.sleep(0.2)
    # What SLURM sends before preempting or at the time limit, to the task (the local executor's
    # own _interrupt stops at its controller process).
    controller = job._process.pid
    (task,) = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    os.kill(int(task), signal.SIGUSR2)
    assert job.result() == "resumed"
    info = json.loads((path / "run.json").read_text())
    assert info["status"] == "complete" and info["resumed_with"] == [1]
