"""Averaged members (SWA, EMA) are their own kind in a comparison: contrasted with the reference's
students as exploratory contrasts, never mixed into the students' means or barriers."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from landscape.study.collect import RunRecord, load_run
from landscape.study.compare import compare_runs


def _record(method: str, seed: int, lam: dict[str, float], kinds: dict[str, str]) -> RunRecord:
    return RunRecord(
        path=Path(f"/{method}-s{seed}"),
        name=f"{method}-s{seed}",
        method=method,
        seed=seed,
        epoch=10,
        kinds=kinds,
        values={m: {"lambda_max": v} for m, v in lam.items()},
        settings={},
        definitions={},
        config={"data": "digits"},
    )


def test_averages_are_contrasted_separately_and_only_as_exploratory():
    rng = np.random.default_rng(0)
    runs = []
    students, averages = [], []
    for seed in range(5):
        ref = float(rng.uniform(4, 6))
        s0, s1, avg = (float(v) for v in rng.uniform(2, 3, size=3))
        runs.append(_record("okdph", seed, {"student_0": ref}, {"student_0": "students"}))
        runs.append(
            _record(
                "swa",
                seed,
                {"student_0": s0, "student_1": s1, "swa_0": avg},
                {"student_0": "students", "student_1": "students", "swa_0": "average"},
            )
        )
        students.append(math.log(ref) - math.log((s0 + s1) / 2))
        averages.append(math.log(ref) - math.log(avg))
    result = compare_runs(runs, reference="okdph")
    by_kind = {c["kind"]: c for c in result["contrasts"] if c["measure"] == "lambda_max"}
    assert by_kind["students"]["b"] == "swa" and by_kind["average"]["b"] == "swa (average)"
    assert by_kind["students"]["estimate"] == pytest.approx(math.exp(np.mean(students)))
    assert by_kind["average"]["estimate"] == pytest.approx(math.exp(np.mean(averages)))
    assert by_kind["students"]["family"] == "primary"
    assert by_kind["average"]["family"] == "exploratory"
    assert "average" in result["methods"]["swa"] and "average" not in result["methods"]["okdph"]


def test_a_run_with_averages_keeps_them_out_of_the_barriers(tmp_path):
    run = tmp_path / "swa-s0"
    (run / "analysis").mkdir(parents=True)
    info = {"format": "okdph-run", "status": "complete", "epochs_done": 3, "arch": {"name": "mlp"}}
    info["config"] = {"seed": 0}
    info["method"] = {"name": "swa"}
    (run / "run.json").write_text(json.dumps(info))
    rows = [
        {"member": "student_0", "role": "network", "lambda_max": 2.0},
        {"member": "student_1", "role": "network", "lambda_max": 3.0},
        {"member": "swa_0", "role": "average", "lambda_max": 1.0},
    ]
    curves = {
        "epoch_0003/interp/student_0--student_1": {"barrier_train": 0.5},
        "epoch_0003/interp/student_0--swa_0": {"barrier_train": 9.0},
    }
    summary = {"epochs": [3], "flatness": {"3": rows}, "curves": curves, "settings": {}}
    (run / "analysis" / "summary.json").write_text(json.dumps({**summary, "records": {}}))
    record = load_run(run)
    assert record.kinds == {"student_0": "students", "student_1": "students", "swa_0": "average"}
    assert record.values["student_0"]["barrier_students"] == 0.5
    assert "barrier_students" not in record.values["swa_0"]
