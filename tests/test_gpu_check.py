"""analyses/gpu_check.py: one line and exit 0 without CUDA; every path runs on the CPU."""

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "analyses" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _load().main([]) == 0
    out = capsys.readouterr().out.strip()
    assert out == "gpu_check: no CUDA device on this machine; nothing to check"


@pytest.mark.slow
def test_every_check_runs_on_the_cpu_against_itself(capsys):
    assert _load().main(["--device", "cpu", "--smoke"]) == 0
    out = capsys.readouterr().out
    for name in ("training (2 batches, fp32)", "top-5 eigenvalues", "trace", "11x11 surface"):
        assert f"ok   {name}" in out
    assert "all checks passed" in out
