"""Markdown tables of a compared study, for the README and the results pages.

Reads ``STUDY/compare/compare.json`` (written by ``landscape compare STUDY``) and prints: the
students' means over runs with 95% intervals for the chosen measures, the accuracy as the OKDPH
reference code reports it beside the students' last-epoch accuracy, and the verdicts.

    .venv/bin/python analyses/study_tables.py runs/study-fmnist [--measures test_acc,lambda_max]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

DEFAULT_MEASURES = "test_acc,train_acc,gap_accuracy,lambda_max,barrier_student"


def _cell(d: dict[str, Any] | None) -> str:
    if not d or not math.isfinite(d.get("mean", math.nan)):
        return ""
    lo, hi = d["ci_low"], d["ci_high"]
    interval = f" [{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else ""
    return f"{d['mean']:.4g}{interval}"


def means_table(result: dict[str, Any], measures: list[str], kind: str = "students") -> str:
    """One row per method: ``mean [95% interval]`` of each measure over runs (n in the last
    column, from the first measure a method has)."""
    lines = [
        "| method | " + " | ".join(measures) + " | n runs |",
        "|---|" + "---|" * len(measures) + "---:|",
    ]
    for method, kinds in result["methods"].items():
        row = kinds.get(kind, {})
        n = next((row[m]["n"] for m in measures if m in row), 0)
        cells = " | ".join(_cell(row.get(m)) for m in measures)
        lines.append(f"| {method} | {cells} | {n} |")
    return "\n".join(lines)


def reported_table(result: dict[str, Any]) -> str:
    """The reference code's best-over-epochs-and-networks accuracy against the students'
    last-epoch accuracy, and the difference (the selection on the test set)."""
    lines = [
        "| method | as the reference code reports it | students, last epoch | selection | "
        "epochs tested |",
        "|---|---|---|---|---|",
    ]
    for method, r in result.get("reported_accuracy", {}).items():
        epochs = r["epochs_tested"]
        span = f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])
        lines.append(
            f"| {method} | {_cell(r['best_over_epochs_and_networks'])} | "
            f"{_cell(r['students_last_epoch'])} | {_cell(r['selection'])} | {span} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--measures", default=DEFAULT_MEASURES)
    args = parser.parse_args(argv)
    path = args.study / "compare" / "compare.json"
    if not path.exists():
        parser.error(f"{path} does not exist: run `landscape compare {args.study}` first")
    result = json.loads(path.read_text())
    print(means_table(result, args.measures.split(",")))
    print()
    print(reported_table(result))
    print()
    for line in result["verdicts"]:
        print(f"- {line}")
    for line in result["caveats"]:
        print(f"- caveat: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
