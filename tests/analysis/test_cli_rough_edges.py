"""Rough edges of the `landscape` command: where compare writes, the analysis lock, --resume
with other flags, and the help and errors of foreign layouts."""

import json
import shutil

import pytest
import torch

from landscape.cli import build_parser, main
from landscape.measures.registry import get

FAST = ["--samples", "32", "--batch-size", "32", "--k", "1", "--tol", "0.1", "--no-progress"]


def _analyse(run) -> None:
    assert main(["analyze", str(run), "--analyses", "fit", *FAST]) == 0


def _one_sentence(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ---- the lock -----------------------------------------------------------------------------------
def test_no_lock_file_is_left_after_an_analysis_finished_or_failed(tiny_run, monkeypatch):
    _analyse(tiny_run)
    analysis = tiny_run / "analysis"
    assert (analysis / "summary.json").exists() and not (analysis / ".lock").exists()

    def broken(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(get("eigen")), "compute", broken)
    assert main(["analyze", str(tiny_run), "--analyses", "eigen", *FAST]) == 130
    assert not (analysis / ".lock").exists()


# ---- --resume and the flags given with it -------------------------------------------------------
def test_resume_refuses_flags_that_change_the_stored_settings(tiny_run, capsys):
    _analyse(tiny_run)
    capsys.readouterr()
    assert main(["analyze", str(tiny_run), "--resume", "--samples", "999", "--k", "3"]) == 2
    err = _one_sentence(capsys)
    assert "--samples (999, stored 32)" in err and "--k (3, stored 1)" in err
    # A flag repeating the stored value is no conflict.
    assert main(["analyze", str(tiny_run), "--resume", "--samples", "32", "--no-progress"]) == 0
    assert "(0 computed now)" in capsys.readouterr().out


# ---- compare: where it writes, and what it needs ------------------------------------------------
def test_compare_of_one_run_writes_beside_it_and_says_it_needs_more(
    tiny_run, tmp_path, monkeypatch, capsys
):
    _analyse(tiny_run)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["compare", str(tiny_run)]) == 0
    assert not (tmp_path / "compare").exists()  # never into the current directory
    assert (tiny_run / "compare" / "compare.html").exists()
    assert "Comparison needs at least 2 analysed runs" in capsys.readouterr().out
    # A folder holding that one run: one sentence naming the run and what compare needs.
    holder = tmp_path / "holder"
    holder.mkdir()
    shutil.move(tiny_run, holder / "demo")
    assert main(["compare", str(holder)]) == 2
    err = _one_sentence(capsys)
    assert f"holds one run, {holder / 'demo'}" in err and "at least two" in err


def test_compare_does_not_overwrite_the_comparison_of_other_runs(tiny_run, tmp_path, capsys):
    _analyse(tiny_run)
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    assert main(["compare", str(tiny_run), str(other)]) == 0
    both = tmp_path / "compare"  # the runs' common folder
    assert json.loads((both / "compare.json").read_text())["inputs"] == [
        str(tiny_run.resolve()),
        str(other.resolve()),
    ]
    assert main(["compare", str(tiny_run), str(other)]) == 0  # the same runs: rewritten
    capsys.readouterr()
    assert main(["compare", str(tiny_run), "--out", str(both)]) == 2
    assert "holds a comparison of other runs" in _one_sentence(capsys)


# ---- foreign layouts and help -------------------------------------------------------------------
def test_a_state_dict_folder_without_arch_and_data_names_both(tiny_run, tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    models = torch.load(tiny_run / "checkpoints" / "epoch_0002.pt", weights_only=True)["models"]
    torch.save(models["student_0"], folder / "a.pt")
    assert main(["analyze", str(folder), "--no-progress"]) == 2
    err = _one_sentence(capsys)
    assert "state-dict folder" in err and "--arch and --data" in err


@pytest.mark.parametrize("command", ["hessian", "interp", "surface"])
def test_every_epoch_option_has_help(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    epoch = next(a for a in sub._actions if a.dest == "epoch")
    assert "last" in epoch.help and "epoch" in epoch.help
