"""Point labels on planes and trajectories do not overlap when members end close together."""

from landscape.report.figures import label_positions, surface_figure


def test_close_points_get_distinct_label_positions():
    far = label_positions({"a": [0.0, 0.0], "b": [1.0, 1.0]})
    assert far == {"a": "top center", "b": "top center"}
    close = label_positions(
        {
            "student_0": [1.0, 1.0],
            "student_1": [1.0, 1.001],
            "hybrid": [1.0, 1.0],
            "start": [0.0, 0.0],
        }
    )
    assert len({close[m] for m in ("student_0", "student_1", "hybrid")}) == 3
    assert close["start"] == "top center"


def test_surface_figure_uses_them():
    record = {
        "x": [0.0, 1.0],
        "y": [0.0, 1.0],
        "train": {"loss": [[1.0, 2.0], [3.0, 4.0]]},
        "points": {"student_0": [0.5, 0.5], "hybrid": [0.5, 0.5]},
        "title": "t",
        "axes": {},
    }
    fig = surface_figure(record, kind="contour")
    positions = {t.name: t.textposition for t in fig.data if t.name in ("student_0", "hybrid")}
    assert positions["student_0"] != positions["hybrid"]
