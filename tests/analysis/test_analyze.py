"""`landscape analyze` end to end on a tiny run: all layouts, resume, bad input."""

import json
import re

import numpy as np
import pytest
import torch
from analysis_cases import fast_settings

from landscape.cli import main
from landscape.measures.registry import default_analyses, measures
from landscape.pipeline.analyze import analyze_run

CLI_FAST = ["--samples", "64", "--no-progress"]


def test_full_suite_on_our_layout(tiny_run):
    outcome = analyze_run(tiny_run, fast_settings(), show_progress=False)
    summary = outcome.summary
    out = tiny_run / "analysis"
    assert outcome.out == out and outcome.report == out / "report.html"
    keys = set(summary["records"])
    assert not (out / "partial").exists()  # surfaces' chunks go once their pieces are stored
    for member in ("student_0", "student_1", "hybrid"):
        for analysis in ("eigen", "trace", "density", "sharpness", "surface"):
            assert f"epoch_0002/{member}/{analysis}" in keys
    assert {
        "epoch_0002/interp/student_0--student_1",
        "epoch_0002/interp/student_0--hybrid",
        "epoch_0002/interp/student_1--hybrid",
        "epoch_0002/plane/student_0--student_1--hybrid",
        "trajectory/student_0--student_1",
    } <= keys
    rows = {r["member"]: r for r in summary["flatness"]["2"]}
    assert set(rows) == {"student_0", "student_1", "hybrid", "ensemble"}
    for member in ("student_0", "student_1", "hybrid"):
        assert rows[member]["lambda_max"] >= rows[member]["lambda_min"]
        assert rows[member]["trace_stderr"] > 0
        # Where the time goes: every piece's seconds, and the Hessian products it spent.
        eigen = summary["records"][f"epoch_0002/{member}/eigen"]
        assert rows[member]["eigen_n_hvp"] == eigen["n_hvp"] > 0
        assert rows[member]["eigen_seconds"] == eigen["compute_seconds"] > 0
        assert rows[member]["trace_n_hvp"] > 0 and rows[member]["fit_seconds"] > 0
        assert 0 < rows[member]["mean_confidence"] <= 1 and "margin_p10" in rows[member]
    curve = summary["records"]["epoch_0002/interp/student_0--student_1"]
    assert curve["alphas"][0] == -0.25 and 0.0 in curve["alphas"] and 1.0 in curve["alphas"]
    # Every point, the ends included, follows one BatchNorm policy (recalibration on the subset),
    # so the ends sit close to, but not exactly at, the checkpoints' own losses.
    assert curve["detail"]["train"]["bn_endpoints"] == "policy"
    start = curve["train"]["loss"][curve["alphas"].index(0.0)]
    assert start == curve["detail"]["train"]["start_loss"]
    assert start == pytest.approx(_own_loss(tiny_run, "student_0"), rel=0.2)
    plane = summary["records"]["epoch_0002/plane/student_0--student_1--hybrid"]
    assert "midpoint" in plane["kind"]  # two students: the hybrid is on their line
    assert plane["points"]["hybrid"] == [0.0, 0.0]
    for name in ("summary.json", "report.html", "plotly.min.js", "settings.json"):
        assert (out / name).exists()
    assert json.loads((out / "summary.json").read_text())["pieces"] == len(keys)
    assert list((out / "figures").glob("*.json"))
    assert summary["records"]["epoch_0002/hybrid/eigen"]["bn"] == "recalibrated"


def _own_loss(run_dir, member):
    from landscape.pipeline.context import Context
    from landscape.pipeline.runs import open_run

    ctx = Context(open_run(run_dir), fast_settings(), show_progress=False)
    model = ctx.model(2, member)
    with torch.no_grad():
        total = sum(
            torch.nn.functional.cross_entropy(model(x), y, reduction="sum").item()
            for x, y in ctx.data("train")
        )
    return total / ctx.n_samples("train")


def test_rerun_and_resume_compute_nothing_twice(tiny_run, monkeypatch):
    from landscape.measures.registry import get

    interp = get("interp")
    calls = []
    original = type(interp).compute

    def counting(self, ctx, target, settings, workdir):
        calls.append(target.members)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed in the middle of the second curve
        return original(self, ctx, target, settings, workdir)

    monkeypatch.setattr(type(interp), "compute", counting)
    settings = fast_settings(analyses=("interp", "eigen"))
    with pytest.raises(KeyboardInterrupt):
        analyze_run(tiny_run, settings, show_progress=False)
    stored = sorted(p.name for p in (tiny_run / "analysis" / "data").rglob("*.json"))
    assert stored  # the pieces finished before the interruption are on disk
    calls.clear()
    monkeypatch.setattr(
        type(interp),
        "compute",
        lambda self, ctx, target, *a: (
            calls.append(target.members) or original(self, ctx, target, *a)
        ),
    )
    outcome = analyze_run(tiny_run, resume=True, show_progress=False)
    assert outcome.computed == 6 - len(stored)  # 3 eigen + 3 curves, minus the stored ones
    assert len(calls) == len(set(calls)) and outcome.summary["pieces"] == 6
    again = analyze_run(tiny_run, settings, show_progress=False)
    assert again.computed == 0
    changed = analyze_run(
        tiny_run, fast_settings(analyses=("interp", "eigen"), k=3), show_progress=False
    )
    assert changed.computed == 3  # only the eigenvalue pieces depend on k
    # A new definition of a measure recomputes its stored pieces, and only those.
    monkeypatch.setattr(interp, "definition", "barrier/999: a test definition")
    redefined = analyze_run(
        tiny_run, fast_settings(analyses=("interp", "eigen"), k=3), show_progress=False
    )
    assert redefined.computed == 3  # the three curves


def test_foreign_layouts_via_cli(tiny_run, tmp_path, capsys):
    from tests.analysis.test_runs import _reference_layout

    ref = _reference_layout(tiny_run, tmp_path / "ref")
    # The default width does not fit: one sentence naming the file, exit 2.
    code = main(
        [
            "analyze",
            str(ref),
            "--arch",
            "cnn_digits",
            "--data",
            "digits",
            "--analyses",
            "eigen",
            *CLI_FAST,
        ]
    )
    assert code == 2
    assert re.search(r"net\d_2ep\.pkl: the weights of \w+ do not fit", capsys.readouterr().err)
    code = main(
        [
            "analyze",
            str(ref),
            "--arch",
            "cnn_digits:width=4",
            "--data",
            "digits",
            "--epochs",
            "all",
            "--analyses",
            "eigen,interp",
            "--grid",
            "3",
            *CLI_FAST,
        ]
    )
    assert code == 0
    summary = json.loads((ref / "analysis" / "summary.json").read_text())
    assert summary["run"]["layout"] == "reference" and summary["epochs"] == [1, 2]
    assert "epoch_0001/interp/student_0--hybrid" in summary["records"]

    plain = tmp_path / "plain"
    plain.mkdir()
    models = torch.load(tiny_run / "checkpoints" / "epoch_0002.pt", weights_only=True)["models"]
    torch.save(models["student_0"], plain / "first.pt")
    torch.save(models["student_1"], plain / "<i>second.pt")
    code = main(
        [
            "analyze",
            str(plain),
            "--arch",
            "cnn_digits:width=4",
            "--data",
            "digits",
            "--analyses",
            "eigen,interp",
            "--out",
            str(tmp_path / "plain_out"),
            *CLI_FAST,
        ]
    )
    assert code == 0
    html = (tmp_path / "plain_out" / "report.html").read_text()
    body = html.split("</head>", 1)[1]
    assert "&lt;i&gt;second" in body and "<i>second" not in body


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["analyze", "{missing}"], "does not exist"),
        (["analyze", "{empty}"], "holds no checkpoint"),
        (["analyze", "{run}", "--analyses", "eigen,curvature"], "unknown analysis 'curvature'"),
        (["analyze", "{run}", "--members", "student_9"], "has no member 'student_9'"),
        (["analyze", "{run}", "--epochs", "7"], "has no checkpoint for epoch 7"),
        (["analyze", "{run}", "--grid", "4"], "--grid must be an odd number"),
        (["analyze", "{run}", "--batch-size", "0"], "--batch-size must be positive"),
        (["analyze", "{run}", "--formats", "html,gif"], "unknown format 'gif'"),
        (["hessian", "{run}", "--member", "teacher"], "has no member 'teacher'"),
    ],
)
def test_user_errors_exit_2(argv, fragment, tiny_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "run": tiny_run}
    argv = [a.format(**paths) for a in argv]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and fragment in err


def test_memory_knobs_leave_the_eigenvalues_alone(tiny_run, capsys):
    """--lanczos-basis and --batch-size change where numbers live and how data is chunked."""
    values = []
    for extra in ([], ["--lanczos-basis", "cpu", "--batch-size", "7"]):
        argv = ["hessian", str(tiny_run), "--member", "student_0", "--k", "2", "--json"]
        assert main([*argv, *CLI_FAST, *extra]) == 0
        values.append(json.loads(capsys.readouterr().out)["eigen"]["values"])
    np.testing.assert_allclose(values[1], values[0], rtol=1e-3)  # the certified tolerance


def test_single_analyses_print_json(tiny_run, capsys):
    assert (
        main(["hessian", str(tiny_run), "--member", "hybrid", "--k", "2", "--json", *CLI_FAST]) == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["member"] == "hybrid" and len(record["eigen"]["values"]) == 4
    assert (
        main(
            [
                "interp",
                str(tiny_run),
                "--start",
                "student_0",
                "--end",
                "student_1",
                "--points",
                "5",
                "--json",
                *CLI_FAST,
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    alphas, loss = record["alphas"], record["train"]["loss"]
    l0, l1 = loss[alphas.index(0.0)], loss[alphas.index(1.0)]
    rise = [l - ((1 - a) * l0 + a * l1) for a, l in zip(alphas, loss) if 0 <= a <= 1]
    assert record["barrier"]["train"] == pytest.approx(max(rise))
    assert 0.0 <= record["error_barrier"]["test"] <= 1.0
    assert (
        main(
            ["surface", str(tiny_run), "--member", "student_1", "--grid", "3", "--json", *CLI_FAST]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert len(record["x"]) == 3 and record["detail"]["n_nonfinite"] == 0


def test_analyses_list_is_complete():
    assert set(default_analyses()) == {
        "fit",
        "eigen",
        "trace",
        "density",
        "sharpness",
        "interp",
        "plane",
        "surface",
        "trajectory",
        "relflat",
        "simplex",
    }
    assert set(measures()) == {*default_analyses(), "layers", "adaptive", "pacbayes"}


def test_per_layer_curvature_and_sharpness_grids_reach_summary_and_report(tiny_run, capsys):
    argv = [
        "analyze",
        str(tiny_run),
        "--analyses",
        "sharpness",
        "--per-layer",
        *CLI_FAST,
        "--rho-worst",
        "0.05,0.2",
        "--rho-average",
        "0.02",
        "--sharpness-m",
        "32",
    ]
    assert main(argv) == 0
    summary = json.loads((tiny_run / "analysis" / "summary.json").read_text())
    records = summary["records"]
    layers = records["epoch_0002/student_0/layers"]
    assert layers["definition"].startswith("layers/") and len(layers["groups"]) >= 2
    assert len(layers["lambda_max"]) == len(layers["groups"]) == len(layers["trace"])
    sharp = records["epoch_0002/hybrid/sharpness"]
    assert [r["rho"] for r in sharp["worst"]] == [0.05, 0.2]
    assert [r["m"] for r in sharp["worst"]] == [32, 32] and sharp["worst_full"][0]["m"] == 0
    assert sharp["worst"][0]["n_groups"] == 2  # 64 samples in groups of 32
    # The hybrid's statistics are recalibrated once at its weights, then fixed.
    assert sharp["worst"][0]["center_bn"] == "recalibrate"
    assert records["epoch_0002/student_0/sharpness"]["average"][0]["center_bn"] == "own"
    row = next(r for r in summary["flatness"]["2"] if r["member"] == "hybrid")
    assert row["sharpness_worst"] == sharp["worst"][1]["value"]  # the largest radius
    assert set(row["sharpness_worst_by_rho"]) == {"0.05", "0.2"}
    assert isinstance(row["sharpness_plateaued"], bool)
    figures = {p.stem for p in (tiny_run / "analysis" / "figures").glob("*.json")}
    assert {"layers_epoch_0002", "sharpness_epoch_0002"} <= figures
    with pytest.raises(SystemExit) as bad:
        main(["analyze", str(tiny_run), "--rho-worst", "0.1,x", *CLI_FAST])
    assert bad.value.code == 2
    assert "numbers like 0.1,0.5" in capsys.readouterr().err


def test_non_finite_weights_are_refused_in_one_sentence(tiny_run, capsys):
    path = tiny_run / "checkpoints" / "epoch_0002.pt"
    ckpt = torch.load(path, weights_only=True)
    first = next(iter(ckpt["models"]["student_1"]))
    ckpt["models"]["student_1"][first].view(-1)[0] = float("nan")
    torch.save(ckpt, path)
    argv = ["analyze", str(tiny_run), "--analyses", "eigen", "--no-progress", *CLI_FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "student_1 at epoch 2 has non-finite weights" in err


def test_off_a_terminal_progress_is_plain_lines(tiny_run, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    analyze_run(tiny_run, fast_settings(analyses=("eigen",)), show_progress=True)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("landscape: ")]
    assert lines[0] == "landscape: 3 of 3 pieces to compute (0 stored)"
    assert lines[-1].startswith("landscape: piece 3/3 done (epoch_0002/")
    assert "elapsed" in lines[-1] and "left" in lines[-1]


def test_a_second_analysis_of_the_same_folder_is_refused(tiny_run, capsys):
    from landscape.pipeline.store import ResultsStore

    with ResultsStore(tiny_run / "analysis").lock():
        argv = ["analyze", str(tiny_run), "--analyses", "eigen", "--no-progress", *CLI_FAST]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1
        assert "is being analysed by process" in err
    # Released with its holder: the same call now runs.
    assert main(argv) == 0


def test_a_subset_rerun_keeps_stored_results_and_figures_match_the_report(tiny_run):
    analyze_run(tiny_run, fast_settings(analyses=("eigen", "interp")), show_progress=False)
    figures = tiny_run / "analysis" / "figures"
    assert list(figures.glob("spectrum_*.json"))
    subset = analyze_run(tiny_run, fast_settings(analyses=("interp",)), show_progress=False)
    assert subset.computed == 0 and subset.left_out_note() is None
    assert "epoch_0002/student_0/eigen" in subset.summary["records"]  # stored, still reported
    assert "Curvature at epoch 2" in subset.report.read_text()
    assert list(figures.glob("spectrum_*.json"))
    # Under other eigenvalue settings the stored spectra no longer apply: gone from both.
    other = analyze_run(tiny_run, fast_settings(analyses=("interp",), k=3), show_progress=False)
    assert "epoch_0002/student_0/eigen" not in other.summary["records"]
    assert not list(figures.glob("spectrum_*.json"))
    assert list(figures.glob("interp_*.json"))
    # ... and the user is told, in one sentence, what was left out and how to show it again.
    assert set(other.left_out) == {
        f"epoch_0002/{m}/eigen" for m in ("student_0", "student_1", "hybrid")
    }
    note = other.left_out_note()
    assert note is not None and "eigen (3)" in note and "--k" in note and "\n" not in note


def test_missing_cifar_data_speaks_landscape_flags(tiny_run, tmp_path, capsys):
    from tests.analysis.test_runs import _reference_layout

    ref = _reference_layout(tiny_run, tmp_path / "ref")
    argv = [
        "hessian",
        str(ref),
        "--arch",
        "cnn_digits:width=4",
        "--data",
        "cifar10",
        "--member",
        "student_0",
        "--no-progress",
    ]
    assert main([*argv, "--data-root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --data-root DIR" in err and "data.download" not in err
    assert len(err.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert main([*argv, "--data-root", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --data-root DIR holding cifar10" in err
