"""`--align weights` through `landscape analyze`: interpolation after weight matching, with the
unaligned barriers kept beside."""

import json

from landscape.cli import main

CLI_FAST = ["--samples", "64", "--batch-size", "32", "--alphas", "5", "--grid", "3"]


def test_interp_and_plane_align_the_end_first(tiny_run, capsys):
    argv = ["analyze", str(tiny_run), "--analyses", "interp,plane", *CLI_FAST, "--no-progress"]
    assert main([*argv, "--align", "weights"]) == 0
    summary = json.loads((tiny_run / "analysis" / "summary.json").read_text())
    key = "epoch_0002/interp/student_0--student_1"
    record = summary["records"][key]
    assert record["alignment"]["groups"] >= 1 and record["alignment"]["sweeps"] >= 1
    entry = summary["curves"][key]
    assert entry["aligned"] is True
    assert entry["unaligned_barrier_train"] == record["unaligned"]["barrier"]["train"]
    if record["alignment"]["units_moved"] == 0:  # nothing permuted: the same line twice
        assert entry["barrier_train"] == entry["unaligned_barrier_train"]
    plane = summary["records"]["epoch_0002/plane/student_0--student_1--hybrid"]
    assert set(plane["alignment"]) == {"student_1", "hybrid"}
    # compare reports the students' barriers after and before the alignment.
    assert main(["compare", str(tiny_run), "--out", str(tiny_run / "cmp")]) == 0
    students = json.loads((tiny_run / "cmp" / "compare.json").read_text())["methods"]["okdph"]
    assert (
        students["students"]["unaligned_barrier_students"]["mean"]
        == entry["unaligned_barrier_train"]
    )
    # The default (no alignment) keeps the results stored before the setting existed.
    capsys.readouterr()
    assert main(argv) == 0
    assert "computed now" in capsys.readouterr().out
    again = json.loads((tiny_run / "analysis" / "summary.json").read_text())
    assert "aligned" not in again["curves"][key]
    assert main([*argv, "--align", "nonsense"]) == 2
    assert "--align must be one of none, weights" in capsys.readouterr().err
