"""`okdph sweep` -> `landscape analyze` -> `landscape compare` end to end on a tiny grid."""

import json

import pytest
from analysis_cases import fast_settings

from landscape.cli import main as landscape
from landscape.pipeline.analyze import analyze_run
from okdph.cli import main as okdph

TINY = ["epochs=2", "data.train_subset=128", "model.width=4", "batch_size=64"]
SWEEP = [
    "sweep",
    "--preset",
    "demo",
    "--methods",
    "independent,okdph",
    "--seeds",
    "0,1",
    "--set",
    *TINY,
    "--no-progress",
]
ANALYSES = ("fit", "eigen", "trace", "sharpness", "interp")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    assert okdph([*SWEEP, "--out", str(out)]) == 0
    for run in sorted(p for p in out.iterdir() if p.is_dir()):
        analyze_run(run, fast_settings(analyses=ANALYSES), show_progress=False)
    return out


def test_sweep_writes_the_grid_and_skips_or_resumes_on_rerun(study, capsys, tmp_path):
    record = json.loads((study / "study.json").read_text())
    names = [r["name"] for r in record["runs"]]
    assert names == ["independent-s0", "independent-s1", "okdph-s0", "okdph-s1"]
    assert record["protocol"] == "matched"
    assert all("init=shared" in r["overrides"] for r in record["runs"])  # one init rule
    for name in names:
        assert json.loads((study / name / "run.json").read_text())["status"] == "complete"
    capsys.readouterr()
    assert okdph([*SWEEP, "--out", str(study)]) == 0
    assert "4 done, 0 to train" in capsys.readouterr().err
    # A different grid in the same folder is refused, in one sentence.
    other = [a if a != "0,1" else "0,2" for a in SWEEP]
    assert okdph([*other, "--out", str(study)]) == 2
    assert "holds a different study" in capsys.readouterr().err


def test_an_interrupted_sweep_resumes_its_unfinished_run(tmp_path, capsys):
    out = tmp_path / "s"
    argv = [
        "sweep",
        "--preset",
        "demo",
        "--methods",
        "dml",
        "--seeds",
        "3",
        "--set",
        *TINY,
        "--no-progress",
        "--out",
        str(out),
    ]
    assert okdph(argv) == 0
    run = out / "dml-s3"
    info = json.loads((run / "run.json").read_text())
    (run / "checkpoints" / "epoch_0002.pt").unlink()
    (run / "checkpoints" / "epoch_0002.json").unlink(missing_ok=True)
    (run / "run.json").write_text(json.dumps({**info, "status": "running", "epochs_done": 1}))
    capsys.readouterr()
    assert okdph(argv) == 0
    assert "dml-s3: resume" in capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert okdph([*argv[:-2], "--out", str(tmp_path / "p"), "--print-commands"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("okdph train") and "--set method=dml" in line and "seed=3" in line


def test_compare_reports_methods_contrasts_and_verdicts(study, capsys):
    assert landscape(["compare", str(study), "--formats", "html,json"]) == 0
    printed = capsys.readouterr().out
    assert "inconclusive at n=2" in printed
    result = json.loads((study / "compare" / "compare.json").read_text())
    assert result["reference"] == "okdph"
    students = result["methods"]["okdph"]["students"]
    assert students["lambda_max"]["n"] == 2 and students["lambda_max"]["log"] is True
    assert result["methods"]["okdph"]["hybrid"]["lambda_max"]["n"] == 2
    lam = next(c for c in result["contrasts"] if c["measure"] == "lambda_max")
    assert lam["b"] == "independent" and lam["n"] == 2 and lam["family"] == "primary"
    assert lam["p"] == pytest.approx(0.5)  # the smallest two-sided sign-flip p with 2 pairs
    assert lam["p_adj"] >= lam["p"]
    assert any("paper-mode OKDPH" in c for c in result["caveats"])
    assert {c["target"] for c in result["correlations"]} <= {"gap_accuracy", "gap_loss", "test_acc"}
    rows = (study / "compare" / "compare.csv").read_text().splitlines()
    assert rows[0] == "run,method,seed,epoch,member,kind,measure,value"
    assert any(",okdph,1,2,hybrid,hybrid,lambda_max," in r for r in rows)
    assert (study / "compare" / "compare.html").exists()


def test_compare_refuses_runs_analysed_differently(study, capsys, tmp_path):
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(study, copy)
    summary_file = copy / "okdph-s1" / "analysis" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["settings"]["samples"] = 999
    summary_file.write_text(json.dumps(summary))
    assert landscape(["compare", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "different settings (samples" in err and len(err.strip().splitlines()) == 1


def test_compare_reports_accuracy_as_the_reference_code_does(study, capsys):
    """The best test accuracy over every tested epoch and every network (hybrid included, the
    ensemble not), beside the students' last-epoch accuracy, per run from metrics.jsonl."""
    assert landscape(["compare", str(study), "--formats", "html,json"]) == 0
    assert "accuracy as the reference code reports it" in capsys.readouterr().out
    result = json.loads((study / "compare" / "compare.json").read_text())
    okdph_runs = sorted(p for p in study.iterdir() if p.name.startswith("okdph"))
    best, last = [], []
    for run in okdph_runs:
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        accs = [
            v
            for line in lines
            for k, v in line.items()
            if k.endswith("/test_acc") and not k.startswith("ensemble")
        ]
        best.append(max(accs))
        final = [line for line in lines if "student_0/test_acc" in line][-1]
        last.append((final["student_0/test_acc"] + final["student_1/test_acc"]) / 2)
    reported = result["reported_accuracy"]["okdph"]
    assert reported["best_over_epochs_and_networks"]["mean"] == pytest.approx(sum(best) / 2)
    assert reported["students_last_epoch"]["mean"] == pytest.approx(sum(last) / 2)
    assert reported["selection"]["mean"] >= 0 and reported["epochs_tested"] == [0, 1, 2]
    page = (study / "compare" / "compare.html").read_text()
    assert "Accuracy as the reference code reports it" in page and "epochs tested" in page


def test_an_empty_declared_primary_family_makes_every_contrast_exploratory(study):
    from landscape.study.compare import compare_runs, load_runs

    declared, runs = load_runs([study])
    result = compare_runs(runs, study={**declared, "primary": {"measures": []}})
    assert result["contrasts"] and all(c["family"] == "exploratory" for c in result["contrasts"])
    assert any("primary family is empty" in c for c in result["caveats"])
