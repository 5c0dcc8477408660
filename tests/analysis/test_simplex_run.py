"""The simplex measure on a three-student OKDPH run, through analyze, the report and compare."""

import json

from analysis_cases import fast_settings

from landscape.cli import main
from landscape.pipeline.analyze import analyze_run
from okdph.config import apply_overrides
from okdph.presets import preset_config
from okdph.trainer import train


def test_three_students_get_a_simplex(tmp_path, capsys):
    run = tmp_path / "three"
    overrides = ["epochs=2", "data.train_subset=128", "model.width=4", "batch_size=64"]
    train(
        apply_overrides(preset_config("demo"), [*overrides, "num_students=3"]), run, progress=False
    )
    settings = fast_settings(analyses=("fit", "interp", "simplex"), simplex_grid=3)
    summary = analyze_run(run, settings, show_progress=False).summary
    key = "epoch_0002/simplex/student_0--student_1--student_2"
    record = summary["records"][key]
    assert len(record["weights"]) == 10  # (3 + 1)(3 + 2) / 2 grid points
    # Its corners sit at the ends of the interpolation curves (same BatchNorm policy).
    curve = summary["records"]["epoch_0002/interp/student_0--student_1"]
    alphas = curve["alphas"]
    assert record["loss"][0] == curve["train"]["loss"][alphas.index(0.0)]
    entry = summary["simplices"][key]
    assert entry["barrier_train"] == record["barrier"] >= 0
    assert (run / "analysis" / "figures" / "simplex_epoch_0002.json").exists()
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
    capsys.readouterr()
    compared = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    students = compared["methods"]["okdph"]["students"]
    assert students["simplex_barrier"]["mean"] == record["barrier"]
