"""What curvature tracking during training costs, relative to training, on the mnist1d preset and
on a CIFAR ResNet-32 (random CIFAR-format images in a temporary directory).

For OKDPH with two students (three tracked members: the students and the hybrid) and the default
tracking settings (512 samples, tol 0.01), it measures the best training-epoch time and the time
of a tracking point, cold (the first) and warm-started (after another epoch of training), with the
products each used, and projects the overhead of a full run: points x point time over epochs x
epoch time, the epoch scaled to the full training split (an epoch is linear in the data, a point
is not).

    .venv/bin/python analyses/benchmarks/bench_tracking.py [--quick] [--threads N]

Writes results/tracking.json and results/tracking.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from bench_trainer import write_cifar

from okdph.config import apply_overrides
from okdph.presets import preset_config
from okdph.run import RunDir
from okdph.session import build_session, describe_run
from okdph.trainer import Trainer

RESULTS = Path(__file__).parent / "results"


def measure(preset: str, overrides: list[str], repeats: int, tmp: Path) -> dict[str, float]:
    """Best epoch time, cold and warm point times and products per member."""
    cfg = apply_overrides(preset_config(preset), [*overrides, "track.every=1"])
    session = build_session(cfg)
    run = RunDir(tmp / preset)
    run.path.mkdir(parents=True)
    run.write_info(describe_run(session))
    trainer = Trainer(session, run, progress=False)
    trainer.open_logs()
    assert trainer.tracker is not None
    start = time.perf_counter()
    cold = trainer.tracker.point(0, trainer.last_lr)
    cold_s = time.perf_counter() - start
    epochs, warm, warm_points = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.train_epoch()
        epochs.append(time.perf_counter() - start)
        start = time.perf_counter()
        warm_points.append(trainer.tracker.point(trainer.step, trainer.last_lr))
        warm.append(time.perf_counter() - start)
    members = [k.split("/")[1] for k in cold if k.endswith("/hvp")]

    def hvps(point: dict[str, float]) -> float:
        return sum(point[f"curv/{m}/hvp"] for m in members) / len(members)

    return {
        "epoch_s": min(epochs),
        "cold_point_s": cold_s,
        "warm_point_s": min(warm),
        "cold_hvp_per_member": hvps(cold),
        "warm_hvp_per_member": sum(hvps(p) for p in warm_points) / len(warm_points),
        "members": len(members),
        "train_samples": len(session.data.train_y),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and images")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else 3
    n_cifar = 640 if args.quick else 1280
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar"
        write_cifar(root, n_cifar)
        problems = [
            # (label, preset, overrides, full-scale train samples, epochs, points)
            ("mnist1d preset (cnn1d, 4000 samples)", "mnist1d", [], 4000, 30, 10),
            (
                f"cifar10-resnet32 ({n_cifar} CIFAR-shaped images)",
                "cifar10-resnet32",
                [f"data.root={root}"],
                50000,
                300,
                20,
            ),
        ]
        for label, preset, overrides, full_n, epochs, points in problems:
            m = measure(preset, overrides, repeats, Path(tmp))
            full_epoch = m["epoch_s"] * full_n / m["train_samples"]
            overhead = (points + 1) * m["warm_point_s"] / (epochs * full_epoch)
            row = {
                "problem": label,
                **m,
                "full_epoch_s": full_epoch,
                "epochs": epochs,
                "points": points,
                "projected_overhead": overhead,
            }
            rows.append(row)
            print(
                f"{label}: epoch {m['epoch_s']:.2f} s ({full_epoch:.1f} s at {full_n}), point "
                f"cold {m['cold_point_s']:.2f} s / warm {m['warm_point_s']:.2f} s, HVPs per member "
                f"{m['cold_hvp_per_member']:.1f} -> {m['warm_hvp_per_member']:.1f}; "
                f"{points} points in {epochs} epochs: +{100 * overhead:.1f}%",
                flush=True,
            )
    meta = {
        "threads": args.threads,
        "loadavg": os.getloadavg(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "repeats": repeats,
        "tracking": "OKDPH, 2 students + hybrid; track.samples=512, tol=0.01, bn=train",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tracking.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Curvature tracking during training: cost relative to training",
        "",
        f"CPU, {args.threads} thread(s), load average at the end {meta['loadavg'][0]:.2f}; "
        f"{meta['tracking']}. Epoch: best of {repeats}; a warm point follows an epoch of "
        "training. Projected overhead: (points + 1, epoch 0 included) x warm point time over "
        "epochs x epoch time scaled to the full training split.",
        "",
        "| problem | epoch (s) | full epoch (s) | point cold (s) | point warm (s) | HVPs/member "
        "cold | warm | points / epochs | projected overhead |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['problem']} | {r['epoch_s']:.2f} | {r['full_epoch_s']:.1f} | "
        f"{r['cold_point_s']:.2f} | {r['warm_point_s']:.2f} | {r['cold_hvp_per_member']:.1f} | "
        f"{r['warm_hvp_per_member']:.1f} | {r['points']} / {r['epochs']} | "
        f"{100 * r['projected_overhead']:.1f}% |"
        for r in rows
    ]
    (RESULTS / "tracking.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
