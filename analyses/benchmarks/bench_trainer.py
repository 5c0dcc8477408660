"""OKDPH's training cost relative to DML's for the same students, data and batch size.

OKDPH adds a third forward/backward (the hybrid-weight model on its own view) and, in paper mode,
the convex combination of the students' parameters with autograd through it. This measures what
that costs per epoch, on the embedded digits CNN and on a CIFAR ResNet-32 (random CIFAR-format
images written to a temporary directory).

    .venv/bin/python analyses/benchmarks/bench_trainer.py [--quick] [--threads N]

Writes results/trainer.json and results/trainer.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from okdph.config import apply_overrides
from okdph.presets import preset_config
from okdph.run import RunDir
from okdph.session import build_session
from okdph.trainer import Trainer

RESULTS = Path(__file__).parent / "results"

METHODS = {
    "dml": ["method=dml"],
    "okdph (paper)": ["method=okdph", "method.mode=paper"],
    "okdph (code)": ["method=okdph", "method.mode=code"],
    "independent": ["method=independent"],
}


def write_cifar(root: Path, n_train: int, seed: int = 0) -> None:
    """Random images in CIFAR-10's pickle format (5 train batches and a test batch)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in [*((f"data_batch_{i}", n_train // 5) for i in range(1, 6)), ("test_batch", 64)]:
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)


def best_epoch_seconds(configs: dict[str, list[str]], repeats: int) -> dict[str, float]:
    """Best wall time of one training epoch (no evaluation) per config. Repeats are interleaved
    across configs so that load from other processes affects every method alike."""
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in configs.items():
            session = build_session(apply_overrides(preset_config("demo"), overrides))
            trainers[name] = Trainer(
                session, RunDir(Path(tmp) / name.replace(" ", "_")), progress=False
            )
            trainers[name].train_epoch()  # warm-up: allocator, first-call overheads
        times: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(repeats):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_epoch()
                times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and images")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 5
    n_cifar = 640 if args.quick else 1280
    rows = []
    with tempfile.TemporaryDirectory() as cifar_root:
        write_cifar(Path(cifar_root), n_cifar)
        problems = {
            "cnn_digits (width 32), digits, batch 64": ["augment=shift"],
            f"resnet32, {n_cifar} CIFAR-shaped images, batch 128": [
                "data=cifar10",
                f"data.root={cifar_root}",
                "model=resnet32",
                "batch_size=128",
                "augment=crop+flip",
            ],
        }
        for problem, base in problems.items():
            times = best_epoch_seconds(
                {n: [*base, *extra] for n, extra in METHODS.items()}, repeats
            )
            for name, seconds in times.items():
                rows.append(
                    {
                        "problem": problem,
                        "method": name,
                        "epoch_s": seconds,
                        "relative_to_dml": seconds / times["dml"],
                    }
                )
                print(
                    f"{problem:<48} {name:<14} {seconds:8.3f} s  x{seconds / times['dml']:.2f} of DML"
                )
    meta = {
        "threads": args.threads,
        "loadavg": os.getloadavg(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "students": 2,
        "repeats": repeats,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trainer.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# OKDPH epoch time relative to DML (same 2 students, data, batch size)",
        "",
        f"CPU, {args.threads} thread(s), load average at the end {meta['loadavg'][0]:.2f}; "
        f"best of {repeats} epochs after a warm-up epoch; every method gets one augmented view "
        "per network (OKDPH: 3 views).",
        "",
        "| problem | method | epoch (s) | relative to DML |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['problem']} | {r['method']} | {r['epoch_s']:.3f} | {r['relative_to_dml']:.2f} |"
        for r in rows
    ]
    (RESULTS / "trainer.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
