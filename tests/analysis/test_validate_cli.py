"""`okdph sweep --vary` -> `landscape analyze` -> `landscape validate` end to end on a tiny grid
(two axes of two values, two seeds: 8 runs of 3 epochs on 256 digits)."""

import csv
import json
import shutil

import pytest
from analysis_cases import fast_settings

from landscape.cli import main as landscape
from landscape.pipeline.analyze import analyze_run
from okdph.cli import main as okdph

SWEEP = [
    "sweep",
    "--preset",
    "demo",
    "--methods",
    "independent",
    "--seeds",
    "0,1",
    "--vary",
    "optim.lr=0.1,0.3",
    "batch_size=32,64",
    "--set",
    "epochs=3",
    "data.train_subset=256",
    "model.width=8",
    "--no-progress",
]
# fit (gaps, baselines) and the top eigenvalue only: trace, sharpness, ... are left absent.
SETTINGS = fast_settings(analyses=("fit", "eigen"), k=1, certify_top=0.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "s"
    assert okdph([*SWEEP, "--out", str(out)]) == 0
    for run in sorted(p for p in out.iterdir() if p.is_dir()):
        analyze_run(run, SETTINGS, show_progress=False, formats=("json",))
    return out


def _edited(study, tmp_path, edit):
    copy = tmp_path / "s"
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("validate"))
    record = json.loads((copy / "study.json").read_text())
    edit(record)
    (copy / "study.json").write_text(json.dumps(record))
    return copy


def test_validate_writes_its_files_and_says_which_measures_predict_the_gap(study, capsys):
    assert landscape(["validate", str(study), "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(
        "Against gap_accuracy over 8 runs (4 configurations x 2 seeds; axes: optim.lr "
        "(2 values), batch_size (2 values);"
    )
    assert "lambda_max" in printed and "Not in the analysis" in printed and "trace" in printed
    assert "Criterion: a measure validates against gap_accuracy when Psi >= 0.2" in printed
    assert printed.strip().endswith(f"results: {study / 'validate'}")
    out = study / "validate"
    result = json.loads((out / "validate.json").read_text())
    assert result["axes"] == {"optim.lr": ["0.1", "0.3"], "batch_size": ["32", "64"]}
    assert (result["n_runs"], result["n_configurations"]) == (8, 4)
    assert result["seeds_per_configuration"] == {"min": 2, "max": 2}
    assert result["criterion"]["target"] == "gap_accuracy" and result["bootstrap"]["n_resamples"]
    assert {"trace", "sharpness_worst"} <= set(result["absent"])
    assert {"lambda_max", "weight_norm"} <= set(result["ranking"])
    lam = result["results"]["lambda_max"]
    assert set(lam) == {"gap_accuracy", "gap_loss"}
    assert lam["gap_accuracy"]["kendall"]["all"]["n_runs"] == 8
    assert set(lam["gap_accuracy"]["granulated"]["axes"]) == {"optim.lr", "batch_size"}
    assert lam["gap_accuracy"]["granulated"]["axes"]["optim.lr"]["groups"] == 2
    floor = result["noise_floor"]["gap_accuracy"]
    assert floor["df"] == 4 and floor["s2"] >= 0 and floor["seeds"] == 2
    assert result["paragraph"] in printed
    with (out / "validate.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["measure", "target", "statistic", "axis", "value"]
    stats = {(r["measure"], r["target"], r["statistic"], r["axis"]) for r in rows}
    assert ("lambda_max", "gap_accuracy", "psi", "optim.lr") in stats
    assert ("lambda_max", "gap_loss", "sign_error_mean", "") in stats
    assert ("lambda_max", "", "noise_ratio", "") in stats
    page = (out / "validate.html").read_text()
    assert "<table class='validate'>" in page and "Granulated tau" in page
    assert page.count('class="plotly-graph-div"') >= 4  # 2 scatter plots, psi, sign-error
    assert (out / "plotly.min.js").exists()


def test_validate_uses_the_criterion_declared_in_study_json(study, tmp_path, capsys):
    def declare(record):
        record["validate"] = {"psi": -1, "tau_ci_low": -2, "sign_error": 1.5, "target": "gap_loss"}

    copy = _edited(study, tmp_path, declare)
    assert landscape(["validate", str(copy), "--bootstrap", "50", "--formats", "json"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Against gap_loss over 8 runs")
    result = json.loads((copy / "validate" / "validate.json").read_text())
    assert result["criterion"]["psi"] == -1 and result["criterion"]["target"] == "gap_loss"
    assert not (copy / "validate" / "validate.html").exists()
    verdict = result["verdicts"]["lambda_max"]
    assert verdict["target"] == "gap_loss"
    assert verdict["checks"]["psi"]["passes"] and verdict["checks"]["tau_ci_low"]["passes"]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda r: r.update(vary={}), "varies no training hyperparameter"),
        (
            lambda r: r.update(seeds=[0], runs=[x for x in r["runs"] if x["seed"] == 0]),
            "every configuration of the study has one seed",
        ),
        (lambda r: r.update(validate={"psy": 1}), 'study.json "validate" has unknown key'),
    ],
    ids=["no-axis", "one-seed", "bad-criterion"],
)
def test_validate_refuses_in_one_sentence(study, tmp_path, capsys, edit, words):
    copy = _edited(study, tmp_path, edit)
    assert landscape(["validate", str(copy), "--bootstrap", "10"]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not (copy / "validate").exists()


def test_validate_refuses_a_run_directory(study, capsys):
    run = next(p for p in study.iterdir() if p.is_dir() and p.name.startswith("independent"))
    assert landscape(["validate", str(run)]) == 2
    assert "is not a study directory" in capsys.readouterr().err


def test_validate_declares_the_study_that_follows(study, tmp_path, capsys):
    """--declare writes what `okdph sweep --declare` reads: the validated flatness measures as
    the primary family within the contrast budget, the analyses they need and lambda_max's,
    and the sha256 of the validate.json it came from."""
    import hashlib

    from okdph.sweep import read_declaration

    file = tmp_path / "studies" / "grid.json"
    argv = ["validate", str(study), "--out", str(tmp_path / "v"), "--formats", "html"]
    assert landscape([*argv, "--declare", str(file), "--bootstrap", "200"]) == 0
    assert f"declared in {file}" in capsys.readouterr().out
    declared = read_declaration(file)  # what the sweep accepts
    result = json.loads((tmp_path / "v" / "validate.json").read_text())
    provenance = declared["provenance"]
    digest = hashlib.sha256((tmp_path / "v" / "validate.json").read_bytes()).hexdigest()
    assert provenance["sha256"] == digest
    validated = [m for m in result["ranking"] if result["verdicts"][m]["validates"]]
    assert declared["primary"]["measures"] == [m for m in validated if m == "lambda_max"][:3]
    assert declared["primary"]["baselines"] == ["independent", "dml"]
    assert declared["analyses"].split(",") == ["fit", "eigen"]


def test_the_declared_family_fits_the_contrast_budget():
    from pathlib import Path

    from landscape.study.validate_outputs import declaration

    names = ["trace", "lambda_max", "weight_norm", "sharpness_worst", "relative_flatness"]
    result = {
        "ranking": names,
        "verdicts": {n: {"validates": n != "relative_flatness"} for n in names},
        "measures": {n: {"baseline": n == "weight_norm"} for n in names},
        "criterion": {"target": "gap_accuracy", "text": "Psi >= 0.2"},
    }
    file = Path(__file__)  # any file: its digest is recorded
    three = declaration(result, file, ["independent", "dml"], max_contrasts=6)
    assert three["primary"]["measures"] == ["trace", "lambda_max", "sharpness_worst"]
    assert three["analyses"] == "fit,eigen,trace,sharpness"
    two = declaration(result, file, ["independent", "dml", "kdcl"], max_contrasts=6)
    assert two["primary"]["measures"] == ["trace", "lambda_max"]
    assert two["provenance"]["left_out_for_size"] == ["sharpness_worst"]
    result["verdicts"] = {n: {"validates": False} for n in names}
    none = declaration(result, file, ["independent"])
    assert none["primary"]["measures"] == [] and none["provenance"]["none_validated"]
    assert none["analyses"] == "fit,eigen"  # lambda_max, for continuity
