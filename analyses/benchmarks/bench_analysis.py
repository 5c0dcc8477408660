"""Time to verdict: one run's analysis against its training, piece by piece (issue: the analysis
should cost at most 1.5x the training of the run it measures).

Trains the mnist1d preset (OKDPH, two 1D CNNs and the hybrid), then analyses it with the study's
analyses (``fit,eigen,trace,sharpness,interp --k 1``, 512 samples) twice into fresh folders, in
one process and interleaved: with the Hessian operator's default (autograd graphs kept while they
fit the memory budget) and with graphs rebuilt at every product (the budget set to 0). Both give
identical numbers (tested in tests/landscape/test_hvp.py); only time differs. A warm-up analysis
(fit only) loads the data first, so neither timed analysis pays for it. With ``--repeats N``
training and both analyses are each tried N times, interleaved, and the best of each is compared.

    .venv/bin/python analyses/benchmarks/bench_analysis.py [--preset mnist1d] [--repeats 1]

Writes results/analysis.json and results/analysis.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import landscape.curvature.products as products
from landscape.cli import main as landscape_main
from landscape.measures.base import PieceKey
from okdph.cli import main as okdph_main

RESULTS = Path(__file__).parent / "results"
ANALYSES = "fit,eigen,trace,sharpness,interp"


def _analyze(run: Path, out: Path, keep_graphs: bool) -> dict[str, Any]:
    share = products.GRAPH_MEMORY_SHARE
    products.GRAPH_MEMORY_SHARE = share if keep_graphs else 0.0
    try:
        start = time.perf_counter()
        argv = ["analyze", str(run), "--analyses", ANALYSES, "--k", "1", "--out", str(out)]
        code = landscape_main([*argv, "--no-progress", "--formats", "json"])
        seconds = time.perf_counter() - start
    finally:
        products.GRAPH_MEMORY_SHARE = share
    if code != 0:
        raise SystemExit(f"landscape analyze failed with exit code {code}")
    pieces: dict[str, dict[str, Any]] = {}
    for path in sorted((out / "data").rglob("*.json")):
        record = json.loads(path.read_text()).get("record", {})
        if "compute_seconds" in record:
            key = str(path.relative_to(out / "data").with_suffix(""))
            pieces[key] = {
                "seconds": record["compute_seconds"],
                "n_hvp": record.get("n_hvp") or record.get("n_matvec"),
            }
    return {"seconds": seconds, "pieces": pieces}


def _by_measure(pieces: dict[str, dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, piece in pieces.items():
        # Member pieces end in the measure (epoch/member/eigen), pair pieces name it in the
        # middle (epoch/interp/a--b): the store's path is PieceKey.path().
        measure = PieceKey.parse(key).measure
        out[measure] = out.get(measure, 0.0) + piece["seconds"]
    return out


def rewrite(path: Path) -> None:
    """The markdown again from a stored analysis.json (after a change of its layout)."""
    result = json.loads(path.read_text())
    result["by_measure"] = {k: _by_measure(v["pieces"]) for k, v in result["analysis"].items()}
    path.write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".md").write_text(_markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mnist1d")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_analysis_"))
    try:
        run = work / "run"
        load_before = os.getloadavg()
        warm = ["analyze", str(run), "--analyses", "fit", "--out", str(work / "warm")]
        trained: list[float] = []
        runs: dict[str, list[dict[str, Any]]] = {"kept": [], "rebuilt": []}
        for r in range(args.repeats):
            # Training is repeated too, interleaved with the analyses, so that both sides of the
            # ratio are a best of the same number of tries under the same load.
            shutil.rmtree(run, ignore_errors=True)
            start = time.perf_counter()
            argv = ["train", "--preset", args.preset, "--out", str(run), "--no-progress"]
            if okdph_main(argv) != 0:
                raise SystemExit("training failed")
            trained.append(time.perf_counter() - start)
            if r == 0:  # loads the data first, so no timed analysis pays for it
                landscape_main([*warm, "--no-progress", "--formats", "json"])
            for label in ("rebuilt", "kept") if r % 2 == 0 else ("kept", "rebuilt"):
                out = work / f"{label}-{r}"
                runs[label].append(_analyze(run, out, keep_graphs=label == "kept"))
                shutil.rmtree(out)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {label: min(items, key=lambda i: i["seconds"]) for label, items in runs.items()}
    train_seconds = min(trained)
    result = {
        "preset": args.preset,
        "analyses": ANALYSES,
        "repeats": args.repeats,
        "train_seconds": train_seconds,
        "train_seconds_all": trained,
        "analysis_seconds_all": {k: [i["seconds"] for i in v] for k, v in runs.items()},
        "analysis": best,
        "ratio_to_training": {k: v["seconds"] / train_seconds for k, v in best.items()},
        "by_measure": {k: _by_measure(v["pieces"]) for k, v in best.items()},
        "machine": {
            "cpu": platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_before": load_before,
            "load_after": load_after,
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "analysis.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "analysis.md").write_text(_markdown(result))
    print(_markdown(result))


def _tries(r: dict[str, Any]) -> str:
    """Every try's seconds, when there were several (the table shows the best of each)."""
    if r.get("repeats", 1) < 2:
        return ""
    listed = ", ".join(f"{x:.1f}" for x in r["train_seconds_all"])
    kept = ", ".join(f"{x:.1f}" for x in r["analysis_seconds_all"]["kept"])
    rebuilt = ", ".join(f"{x:.1f}" for x in r["analysis_seconds_all"]["rebuilt"])
    return (
        f"; best of {r['repeats']} tries each, interleaved (training {listed} s; analysis with "
        f"graphs kept {kept} s, rebuilt {rebuilt} s)"
    )


def _markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Time to verdict: one run's analysis against its training (bench_analysis.py)",
        "",
        f"{r['date']}; {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch "
        f"{m['torch']}; load average before / after: "
        f"{', '.join(f'{x:.2f}' for x in m['load_before'])} / "
        f"{', '.join(f'{x:.2f}' for x in m['load_after'])}.",
        "",
        f"`okdph train --preset {r['preset']}`: {r['train_seconds']:.1f} s. `landscape analyze "
        f"--analyses {r['analyses']} --k 1` (512 samples, the study's settings){_tries(r)}:",
        "",
        "| autograd graphs | analysis (s) | / training | "
        + " | ".join(r["by_measure"]["kept"])
        + " |",
        "|---|---:|---:|" + "---:|" * len(r["by_measure"]["kept"]),
    ]
    for label in ("rebuilt", "kept"):
        a = r["analysis"][label]
        per = r["by_measure"][label]
        cells = " | ".join(f"{per.get(k, 0):.1f}" for k in r["by_measure"]["kept"])
        name = "rebuilt every product" if label == "rebuilt" else "kept (default)"
        ratio = r["ratio_to_training"][label]
        lines.append(f"| {name} | {a['seconds']:.1f} | {ratio:.2f}x | {cells} |")
    hvps = {k: v["n_hvp"] for k, v in r["analysis"]["kept"]["pieces"].items() if v.get("n_hvp")}
    if r.get("repeats", 1) >= 3:
        # The best of each side is the table's ratio; the medians show what a typical try saw.
        train = statistics.median(r["train_seconds_all"])
        kept = statistics.median(r["analysis_seconds_all"]["kept"])
        lines += [
            "",
            f"Medians of the tries: training {train:.1f} s, analysis with graphs kept "
            f"{kept:.1f} s, {kept / train:.2f}x.",
        ]
    lines += [
        "",
        "Per-measure columns: seconds summed over the members (compute_seconds of each piece).",
        "Products per piece: " + ", ".join(f"{k} {v}" for k, v in hvps.items()) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
