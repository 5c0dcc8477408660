"""``okdph sweep --share-from STUDY``: an arm that another study finished with the same
configuration is copied, not trained again; a run configured differently is trained."""

import json

from okdph.cli import main

SWEEP = ["sweep", "--preset", "demo", "--seeds", "0", "--no-progress", "--set", "epochs=1"]


def test_finished_runs_with_the_same_configuration_are_shared(tmp_path, capsys):
    first, second = tmp_path / "study", tmp_path / "controls"
    assert main([*SWEEP, "--methods", "independent", "--out", str(first)]) == 0
    marker = first / "independent-s0" / "analysis" / "marker.json"
    marker.parent.mkdir()
    marker.write_text("{}")  # what `landscape analyze` left there travels with the run
    capsys.readouterr()
    argv = [*SWEEP, "--methods", "independent,dml", "--out", str(second)]
    assert main([*argv, "--share-from", str(first)]) == 0
    err = capsys.readouterr().err
    assert "independent-s0 shared from" in err and "dml-s0 shared" not in err
    assert "1 done, 1 to train" in err
    copied = second / "independent-s0"
    assert (copied / "analysis" / "marker.json").exists()
    original = json.loads((first / "independent-s0" / "run.json").read_text())
    assert json.loads((copied / "run.json").read_text()) == original
    assert json.loads((second / "dml-s0" / "run.json").read_text())["status"] == "complete"
    assert not list(second.glob(".*sharing"))


def test_a_run_configured_differently_is_trained_and_a_missing_source_is_one_sentence(
    tmp_path, capsys
):
    first, other = tmp_path / "study", tmp_path / "other"
    assert main([*SWEEP, "--methods", "independent", "--out", str(first)]) == 0
    capsys.readouterr()
    argv = [
        *SWEEP,
        "--methods",
        "independent",
        "--out",
        str(other),
        "--set",
        "optim.lr=0.05",
    ]
    assert main([*argv, "--share-from", str(first)]) == 0
    err = capsys.readouterr().err
    assert "shared" not in err and "0 done, 1 to train" in err
    missing = [*SWEEP, "--methods", "independent", "--out", str(tmp_path / "third")]
    assert main([*missing, "--share-from", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such study directory" in err
