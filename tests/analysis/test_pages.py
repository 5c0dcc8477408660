"""What the report and compare pages draw: HTML tables, readable labels, one colour per member,
powers of ten, interval ends in view, and a sentence where there is nothing to plot.

Built from plain records (no training), so every test runs in well under a second.
"""

import json
import math
from pathlib import Path

import pytest

from landscape.pipeline.summary import write_outputs
from landscape.report import figures
from landscape.report.figures import member_colour
from landscape.study.collect import RunRecord
from landscape.study.compare import compare_runs
from landscape.study.outputs import strip_figure, write_compare

MEMBERS = ("student_0", "student_1", "hybrid")


def _surface(points, title="PCA", x=(-8.0, 2.0), y=(-2.0, 2.0), **extra):
    return {
        "x": list(x),
        "y": list(y),
        "train": {"loss": [[1.0, 2.0], [3.0, 4.0]]},
        "points": points,
        "axes": {
            "x": "PC 1 (86.5% of variance, L2 distance)",
            "y": "PC 2 (18.8% of variance, L2 distance)",
        },
        "title": title,
        **extra,
    }


def _curve(start, end):
    return {
        "label": f"{start} \u2192 {end}",
        "start": start,
        "end": end,
        "alphas": [0.0, 0.5, 1.0],
        "train": {"loss": [0.1, 0.2, 0.1], "accuracy": [0.9, 0.8, 0.9]},
        "test": {"loss": [0.2, 0.3, 0.2], "accuracy": [0.8, 0.7, 0.8]},
        "barrier": {"train": 0.1, "test": 0.1},
    }


# ---- A: tables are HTML ---------------------------------------------------------------------
def _summary(tmp_path: Path) -> dict:
    rows = [
        {"member": "student_0", "role": "network", "lambda_max": 83.5, "test_acc": 0.961},
        {"member": "student_1", "role": "network", "lambda_max": 77.1, "test_acc": 0.972},
        {"member": "hybrid", "role": "hybrid", "lambda_max": 59.3, "test_acc": 0.964},
        {"member": "ensemble", "role": "ensemble", "test_acc": 0.972},
    ]
    return {
        "run": {
            "path": str(tmp_path / "demo"),
            "layout": "okdph",
            "method": "okdph",
            "arch": "cnn_digits",
            "data": "digits",
            "members": {m: "network" for m in MEMBERS},
        },
        "settings": {"members": [], "test_acc": "a setting named with an underscore"},
        "data": {},
        "epochs": [3],
        "flatness": {"3": rows},
        "curves": {},
        "surfaces": {},
        "tracking": {},
        "records": {},
        "files": {},
    }


def test_flatness_table_is_an_html_table_with_names_intact(tmp_path):
    report, _ = write_outputs(_summary(tmp_path), tmp_path, ("html", "json"))
    page = report.read_text()
    # Every row, names as they are (a Plotly table drew "student_0" as "student 0").
    for member in ("student_0", "student_1", "hybrid", "ensemble"):
        assert f"<td>{member}</td>" in page
    assert "<table class='data'>" in page and "Flatness by member" in page
    assert "plotly-graph-div" not in page  # the summary has nothing else to draw
    # The table's data file is a CSV, no Plotly JSON or image of it.
    csv = (tmp_path / "figures" / "flatness_epoch_0003.csv").read_text().splitlines()
    assert csv[0].startswith("member,") and csv[1].startswith("student_0,")
    assert not list((tmp_path / "figures").glob("flatness_*.json"))


def test_no_module_draws_a_plotly_table():
    sources = Path(figures.__file__).parents[1].rglob("*.py")
    assert not [p.name for p in sources if "go.Table(" in p.read_text()]


# ---- B: 3D titles, end-point labels, contour labels -------------------------------------------
def test_3d_axis_titles_are_short_and_the_full_ones_sit_under_the_scene():
    fig = figures.surface_figure(_surface({"hybrid": [0.0, 0.0]}), kind="surface3d")
    scene = fig.layout.scene
    assert (scene.xaxis.title.text, scene.yaxis.title.text) == ("PC 1", "PC 2")
    assert scene.zaxis.title.text == "loss"  # the colour bar says "mean cross-entropy"
    note = fig.layout.annotations[0].text
    assert "PC 2 (18.8% of variance, L2 distance)" in note and "mean cross-entropy" in note
    assert fig.layout.margin.b >= 100  # room for that note


def test_end_points_close_together_on_a_wide_plot_get_their_own_label_positions():
    # Students fused onto their hybrid: close on a plot 10 wide, far apart relative to their
    # own spread (which is what the labels were spaced by).
    points = {"hybrid": [0.0, 0.0], "student_0": [0.0, -0.01], "student_1": [0.0, 0.01]}
    fig = figures.surface_figure(_surface(points), kind="contour")
    positions = {t.name: t.textposition for t in fig.data if t.name in points}
    assert len(set(positions.values())) == 3


def test_contour_and_point_labels_are_light_on_the_dark_colour_scale():
    fig = figures.surface_figure(_surface({"student_0": [0.0, 0.0]}), kind="contour")
    contour = fig.data[0]
    assert contour.contours.showlabels and contour.contours.labelfont.color == "white"
    point = next(t for t in fig.data if t.name == "student_0")
    assert point.textfont.color == "white" and point.textfont.shadow


# ---- C: one colour per member -----------------------------------------------------------------
def test_a_member_has_one_colour_in_every_figure():
    colour = member_colour("student_1")
    own_surface = figures.surface_figure(_surface({"student_1": [0.0, 0.0]}))
    trajectory = figures.surface_figure(
        _surface(
            {"hybrid": [0.0, 0.0], "student_0": [1.0, 1.0], "student_1": [1.0, -1.0]},
            trajectories={"student_0": [[2, 2], [1, 1]], "student_1": [[2, -2], [1, -1]]},
        )
    )
    density = figures.density_figure(
        {
            m: {"grid": [0.0, 1.0], "density": [1.0, 0.5], "sigma": 0.1}
            for m in ("student_1", "hybrid")
        }
    )
    spectrum = figures.spectrum_figure({"student_1": {"values": [3.0, 1.0]}})
    drawn = [
        next(t for t in own_surface.data if t.name == "student_1").marker.color,
        next(t for t in trajectory.data if t.name == "student_1").marker.color,
        next(t for t in trajectory.data if t.name == "student_1 path").line.color,
        density.data[0].line.color,
        spectrum.data[0].marker.color,
    ]
    assert drawn == [colour] * len(drawn)
    assert len({member_colour(m) for m in ("student_0", "student_1", "hybrid")}) == 3
    assert member_colour("ema_1") not in (member_colour("student_0"), colour)


def test_interpolation_curves_take_their_members_colours_and_stay_apart():
    fig = figures.curves_figure([_curve("student_0", "student_1"), _curve("student_0", "hybrid")])
    train = [t for t in fig.data if "(train" in t.name and t.showlegend]
    assert [t.line.color for t in train] == [member_colour("student_0")] * 2
    # Same start: told apart by their ends' colours, on the markers.
    assert [t.marker.color for t in train] == [member_colour(m) for m in ("student_1", "hybrid")]
    assert all(t.opacity < 1 for t in fig.data)  # lines on top of each other stay visible
    test = [t for t in fig.data if "(test" in t.name]
    assert {t.line.dash for t in test} == {"dash"} and {t.line.dash for t in train} == {"solid"}


# ---- D: powers of ten -------------------------------------------------------------------------
def test_the_density_axis_reads_in_powers_of_ten():
    fig = figures.density_figure({"hybrid": {"grid": [0, 1], "density": [1e-9, 1.0]}})
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.exponentformat == "power"


# ---- E: the compare page ----------------------------------------------------------------------
def _run(method, seed, *, barrier=True, fit=True, lam=10.0):
    values = {"test_acc": 0.9 + 0.01 * seed, "lambda_max": lam * (1 + seed)}
    if barrier:
        values["barrier_students"] = 0.1 + 0.05 * seed
    if fit:
        values |= {"train_acc": 0.5, "gap_accuracy": 0.1}  # fits badly: no run kept
    return RunRecord(
        path=Path(f"/runs/{method}-s{seed}"),
        name=f"{method}-s{seed}",
        method=method,
        seed=seed,
        epoch=2,
        kinds={"student_0": "students"},
        values={"student_0": values},
        settings={"samples": 64},
        definitions={},
        config={"seed": seed},
    )


def _page(result, runs, tmp_path, **kwargs):
    write_compare(result, runs, tmp_path, ("html", "json"), **kwargs)
    return (tmp_path / "compare.html").read_text()


def test_one_run_gets_one_sentence_and_no_panels(tmp_path):
    runs = [_run("okdph", 0)]
    page = _page(compare_runs(runs), runs, tmp_path)
    assert "Comparison needs at least 2 analysed runs (seeds) per method" in page
    assert "plotly-graph-div" not in page and not (tmp_path / "figures").exists()
    assert "plotly.min.js" not in page and not (tmp_path / "plotly.min.js").exists()


def test_interval_ends_are_inside_the_panels():
    runs = [
        _run(m, s, lam=lam) for m, lam in (("okdph", 5.0), ("independent", 20.0)) for s in (0, 1)
    ]
    result = compare_runs(runs)
    fig = strip_figure(result, runs)
    titles = [a.text for a in fig.layout.annotations]
    panel = titles.index("lambda_max") + 1
    axis = fig.layout[f"yaxis{panel if panel > 1 else ''}"]
    assert axis.type == "log" and axis.range is not None
    low, high = axis.range
    for method in ("okdph", "independent"):
        d = result["methods"][method]["students"]["lambda_max"]
        assert low < math.log10(d["ci_low"]) and math.log10(d["ci_high"]) < high


def test_the_compare_page_says_why_there_is_no_correlation_and_how_to_send_it(tmp_path):
    runs = [_run(m, s) for m in ("okdph", "independent") for s in (0, 1)]
    page = _page(compare_runs(runs), runs, tmp_path)
    assert "(none)" not in page
    assert "No correlation: no run&#x27;s students fit their training set" in page
    assert "landscape compare --self-contained" in page
    assert "landscape analyze --self-contained" not in page
    unfitted = [_run(m, s, fit=False) for m in ("okdph", "independent") for s in (0, 1)]
    assert "no run holds the fit analysis" in compare_runs(unfitted)["correlation_note"]


@pytest.mark.parametrize("barrier", [True, False])
def test_the_barrier_caveat_only_when_a_barrier_was_measured(barrier):
    runs = [_run(m, s, barrier=barrier) for m in ("okdph", "independent") for s in (0, 1)]
    caveats = compare_runs(runs)["caveats"]
    assert any("student-student barrier" in c for c in caveats) is barrier


def test_verdicts_and_caveats_are_html_lists(tmp_path):
    runs = [_run(m, s) for m in ("okdph", "independent") for s in (0, 1)]
    page = _page(compare_runs(runs), runs, tmp_path)
    assert "<ul class='lines'><li>okdph&#x27;s lambda_max" in page
    # Plotly draws the strip and the contrasts only (verdicts, caveats and correlations were
    # three Plotly tables).
    assert page.count('class="plotly-graph-div"') == 2
    assert json.loads((tmp_path / "compare.json").read_text())["correlation_note"]


def test_html_blocks_show_in_a_notebook():
    """A section's tables are HtmlBlocks among Plotly figures: a notebook displays both."""
    from landscape.report.html import HtmlTable

    table = HtmlTable(["member", "test_acc"], [["student_0", 0.96]])
    assert table._repr_html_() == table.to_html() and "student_0" in table._repr_html_()
