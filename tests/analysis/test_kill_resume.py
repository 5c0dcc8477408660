"""kill -9 during `landscape analyze`, then `--resume`: at most the current chunk is lost and the
numbers equal an uninterrupted analysis."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from landscape.cli import main

ARGS = [
    "--analyses",
    "surface",
    "--grid",
    "15",
    "--samples",
    "64",
    "--no-progress",
    "--formats",
    "json",
]


@pytest.mark.slow
def test_killed_analysis_resumes_to_the_same_numbers(tiny_run, tmp_path):
    clean = tmp_path / "clean"
    shutil.copytree(tiny_run, clean)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "landscape", "analyze", str(tiny_run), *ARGS],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = tiny_run / "analysis" / "partial"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and any(partial.rglob("chunk_*.npz")):
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(["analyze", str(tiny_run), "--resume", "--no-progress", "--formats", "json"]) == 0
    assert main(["analyze", str(clean), *ARGS]) == 0
    for member in ("student_0", "student_1", "hybrid"):
        rel = f"analysis/data/epoch_0002/{member}/surface.json"
        a = json.loads((tiny_run / rel).read_text())["record"]
        b = json.loads((clean / rel).read_text())["record"]
        assert a["train"]["loss"] == b["train"]["loss"], member
    assert not partial.exists()  # cleaned once every piece is stored
    assert killed, "the analysis finished before it could be killed; raise --grid"
