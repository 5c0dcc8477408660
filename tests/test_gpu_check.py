"""analyses/gpu_check.py: one line and exit 0 without CUDA; every path runs on the CPU."""

import pytest
import torch
from analyses_scripts import load_analysis_script


def test_without_cuda_it_says_so_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_analysis_script("gpu_check").main([]) == 0
    out = capsys.readouterr().out.strip()
    assert out == "gpu_check: no CUDA device on this machine; nothing to check"


@pytest.mark.slow
def test_every_check_runs_on_the_cpu_against_itself(capsys):
    assert load_analysis_script("gpu_check").main(["--device", "cpu", "--smoke"]) == 0
    out = capsys.readouterr().out
    for name in ("training (2 batches, fp32)", "top-5 eigenvalues", "trace", "11x11 surface"):
        assert f"ok   {name}" in out
    assert "all checks passed" in out
