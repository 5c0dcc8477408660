"""Curvature tracked during training reaches summary.json, the run's report and the study's
comparison (geometric mean and t band over runs per epoch)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from analysis_cases import fast_settings
from scipy import stats as sps

from landscape.pipeline.analyze import analyze_run
from landscape.study.collect import RunRecord
from landscape.study.compare import compare_runs
from landscape.study.outputs import write_compare
from okdph import trainer
from okdph.config import apply_overrides
from okdph.presets import preset_config


def test_a_tracked_run_has_its_curves_in_the_summary_and_the_report(tmp_path):
    cfg = apply_overrides(
        preset_config("demo"),
        [
            "epochs=2",
            "data.train_subset=128",
            "model.width=4",
            "batch_size=64",
            "track.every=1",
            "track.samples=32",
            "track.max_iter=8",
            "track.tol=0.2",
            "track.trace=true",
            "track.trace_rtol=0.5",
        ],
    )
    run, _ = trainer.train(cfg, tmp_path / "run", progress=False)
    outcome = analyze_run(run.path, fast_settings(analyses=("fit",)), show_progress=False)
    tracking = outcome.summary["tracking"]
    assert set(tracking["members"]) == {"student_0", "student_1", "hybrid"}
    s0 = tracking["members"]["student_0"]
    assert s0["epoch"] == [0, 1, 2] and all(v > 0 for v in s0["lambda_max"])
    assert all(t is not None for t in s0["trace"]) and all(t is not None for t in s0["threshold"])
    assert tracking["members"]["hybrid"]["threshold"] == [None, None, None]
    assert tracking["definition"]["definition"].startswith("track/1")
    html = (outcome.out / "report.html").read_text()
    assert "Curvature during training" in html


def _record(method, seed, curves, threshold):
    members = {
        f"student_{i}": {
            "role": "network",
            "epoch": [0, 5, 10],
            "lambda_max": list(c),
            "threshold": [threshold] * 3,
        }
        for i, c in enumerate(curves)
    }
    return RunRecord(
        path=Path(f"/{method}-s{seed}"),
        name=f"{method}-s{seed}",
        method=method,
        seed=seed,
        epoch=10,
        kinds={m: "students" for m in members},
        values={m: {"lambda_max": c[-1]} for m, c in zip(members, curves)},
        settings={},
        definitions={},
        config={"data": "digits"},
        tracking={"members": members},
    )


def test_compare_summarises_tracked_curves_over_runs(tmp_path):
    rng = np.random.default_rng(0)
    runs, by_epoch = [], {0: [], 5: [], 10: []}
    for seed in range(4):
        for method in ("okdph", "dml"):
            curves = rng.uniform(1, 10, size=(2, 3))
            runs.append(_record(method, seed, curves, 37.9))
            if method == "okdph":
                for i, e in enumerate((0, 5, 10)):
                    by_epoch[e].append(curves[:, i].mean())
    result = compare_runs(runs, reference="okdph")
    band = result["tracking"]["okdph"]
    assert band["epoch"] == [0, 5, 10] and band["n"] == [4, 4, 4]
    for i, e in enumerate((0, 5, 10)):
        logs = np.log(by_epoch[e])
        lo, hi = sps.t.interval(0.95, 3, loc=logs.mean(), scale=logs.std(ddof=1) / 2)
        assert band["mean"][i] == pytest.approx(math.exp(logs.mean()))
        assert (band["ci_low"][i], band["ci_high"][i]) == pytest.approx(
            (math.exp(lo), math.exp(hi))
        )
    assert band["threshold"] == [37.9] * 3
    written, _ = write_compare(result, runs, tmp_path / "cmp", formats=("html", "json"))
    assert "Curvature during training" in (tmp_path / "cmp" / "compare.html").read_text()
    assert (
        json.loads((tmp_path / "cmp" / "compare.json").read_text())["tracking"]["dml"]["n"]
        == [4] * 3
    )
