"""analyses/study_tables.py: markdown tables from a study's compare.json."""

import json
from dataclasses import asdict

import pytest
from analyses_scripts import load_analysis_script

from landscape.study.stats import describe


def test_tables_show_means_intervals_and_the_selection(tmp_path, capsys):
    acc = asdict(describe([0.80, 0.82, 0.84]))
    sharp = asdict(describe([2.0, 8.0], log=True))  # geometric mean 4
    result = {
        "methods": {
            "dml": {"students": {"test_acc": acc}},
            "okdph": {"students": {"lambda_max": sharp}},
        },
        "reported_accuracy": {
            "okdph": {
                "best_over_epochs_and_networks": asdict(describe([0.85, 0.86])),
                "students_last_epoch": asdict(describe([0.83, 0.84])),
                "selection": asdict(describe([0.02, 0.02])),
                "epochs_tested": [45, 46, 50],
            }
        },
        "verdicts": ["okdph vs dml: inconclusive at n = 2"],
        "caveats": ["one problem"],
    }
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "compare.json").write_text(json.dumps(result))
    assert (
        load_analysis_script("study_tables").main(
            [str(tmp_path), "--measures", "test_acc,lambda_max"]
        )
        == 0
    )
    out = capsys.readouterr().out
    lo, hi = acc["ci_low"], acc["ci_high"]
    assert f"| dml | 0.82 [{lo:.3g}, {hi:.3g}] |  | 3 |" in out
    assert "| okdph |  | 4 [" in out and "| 2 |" in out
    assert "| okdph | 0.855 [" in out and "| 0.02 [0.02, 0.02] | 45-50 |" in out
    assert "- okdph vs dml: inconclusive at n = 2" in out and "- caveat: one problem" in out


def test_a_study_without_compare_is_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_analysis_script("study_tables").main([str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "run `landscape compare" in err
