"""Epoch time of every online-distillation method relative to independent training.

Runs one training epoch (no evaluation, no checkpoints) of each method on CIFAR-shaped data
(random uint8 images written as CIFAR-10 pickle files, so the real loader is used) with ResNet-32
students, and reports the best of several repeats divided by the time of *independent* training
of the same number of full networks. Every view uses the same ``crop+flip`` pipeline, so the ratios
measure the methods, not their augmentations; the cost of the augmentation pipelines themselves is
reported separately, relative to one network's forward and backward pass on the same batch.

Usage::

    python analyses/benchmarks/bench_methods.py [--images 256] [--batch 128] [--repeats 5]
        [--threads 1] [--device cpu] [--out analyses/benchmarks/results]

Writes ``methods.json`` and ``methods.md`` to ``--out``. Timings depend on the machine and its
load (``os.getloadavg()`` is recorded before and after); compare ratios, not seconds.
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
import torch.nn.functional as F

from okdph import trainer
from okdph.augment import build_pipeline
from okdph.config import apply_overrides
from okdph.models import create
from okdph.presets import preset_config
from okdph.run import RunDir
from okdph.session import build_session

# name, overrides on the cifar10-resnet32 preset, number of full networks of the baseline
CASES = [
    ("independent (2)", ["method=independent", "num_students=2"], 2),
    ("dml", ["method=dml", "num_students=2"], 2),
    ("kdcl", ["method=kdcl", "num_students=2"], 2),
    ("okdph paper", ["method=okdph", "method.mode=paper", "num_students=2"], 2),
    ("okdph code", ["method=okdph", "method.mode=code", "num_students=2"], 2),
    ("independent (4)", ["method=independent", "num_students=4"], 4),
    ("okddip branches", ["method=okddip", "num_students=4", "method.branches=true"], 4),
    ("okddip networks", ["method=okddip", "num_students=4", "method.branches=false"], 4),
    ("independent (3)", ["method=independent", "num_students=3"], 3),
    ("wml exact", ["method=wml", "num_students=3", "method.hypergrad=exact"], 3),
    ("wml first_order", ["method=wml", "num_students=3", "method.hypergrad=first_order"], 3),
]
PIPELINES = ["crop+flip", "crop+flip+cutout", "crop+flip+rot", "crop+randaugment", "autoaugment"]


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Random images in CIFAR-10's python pickle layout (five train batches and a test batch)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    for name, n in [
        *((f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)),
        ("test_batch", n_test),
    ]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": rng.integers(0, 10, n).tolist()}, f)


def build_loop(overrides: list[str], root: Path, args: argparse.Namespace, work: Path):
    """A trainer for one case, on the CIFAR-shaped files, writing nothing."""
    cfg = apply_overrides(
        preset_config("cifar10-resnet32"),
        [
            f"data.root={root}",
            f"batch_size={args.batch}",
            f"device={args.device}",
            "augment=crop+flip",
            *overrides,
        ],
    )
    run = RunDir(work / "_".join(o.replace("=", "-") for o in overrides))
    return trainer.Trainer(build_session(cfg), run, progress=False)


def time_epochs(loops: dict, args: argparse.Namespace) -> dict[str, list[float]]:
    """Wall time of training epochs, round-robin over the cases (so a change in the machine's
    load hits every case alike), after one warm-up epoch each."""
    times: dict[str, list[float]] = {name: [] for name in loops}
    for round_ in range(args.repeats + 1):
        for name, loop in loops.items():
            _sync(args.device)
            start = time.perf_counter()
            loop.train_epoch()
            _sync(args.device)
            if round_:
                times[name].append(time.perf_counter() - start)
        print(f"round {round_} done", flush=True)
    return times


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pipelines(args: argparse.Namespace) -> dict[str, float]:
    """Seconds per batch of each augmentation pipeline and of one ResNet-32 forward+backward."""
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (args.batch, 3, 32, 32), generator=g, device=device).float() / 255
    y = torch.randint(0, 10, (args.batch,), generator=g, device=device)

    def best(fn) -> float:
        out = []
        for _ in range(args.repeats + 1):
            _sync(args.device)
            start = time.perf_counter()
            fn()
            _sync(args.device)
            out.append(time.perf_counter() - start)
        return min(out[1:])

    results = {}
    for spec in PIPELINES:
        pipeline = build_pipeline(spec, "image")
        results[spec] = best(lambda: pipeline(x, g))  # noqa: B023  (called before the next loop)
    net = create("resnet32").to(device)

    def step() -> None:
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()

    results["resnet32 forward+backward"] = best(step)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="training images per epoch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs (best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_cifar10(root, args.images, 16)
        loops = {name: build_loop(o, root, args, Path(tmp)) for name, o, _ in CASES}
        samples = time_epochs(loops, args)
    epochs = {name: min(t) for name, t in samples.items()}
    pipelines = time_pipelines(args)
    load_after = os.getloadavg()

    rows = []
    baseline = {n: epochs[f"independent ({n})"] for n in (2, 3, 4)}
    for name, overrides, networks in CASES:
        rows.append(
            {
                "method": name,
                "overrides": overrides,
                "baseline": f"independent ({networks})",
                "epoch_s": epochs[name],
                "epoch_s_median": float(np.median(samples[name])),
                "ratio": epochs[name] / baseline[networks],
            }
        )
    network = pipelines["resnet32 forward+backward"]
    augment = [
        {
            "pipeline": spec,
            "batch_s": pipelines[spec],
            "ratio_to_network": pipelines[spec] / network,
        }
        for spec in PIPELINES
    ]
    result = {
        "benchmark": "okdph methods: training-epoch time relative to independent training",
        "setup": {
            "model": "resnet32 (CIFAR-10 head)",
            "images_per_epoch": args.images,
            "batch_size": args.batch,
            "batches_per_epoch": -(-args.images // args.batch),
            "augment": "crop+flip for every view",
            "timing": f"best of {args.repeats} epochs per case, taken round-robin after 1 warm-up "
            "epoch each; no evaluation or checkpoints",
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": list(load_before),
            "loadavg_after": list(load_after),
        },
        "methods": rows,
        "augmentation": {"network_forward_backward_s": network, "pipelines": augment},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "methods.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "methods.md").write_text(render(result))
    print(render(result))


def render(result: dict) -> str:
    """The results as a Markdown report."""
    s = result["setup"]
    lines = [
        "# Training-epoch time of each method, relative to independent training",
        "",
        f"ResNet-32 students on {s['images_per_epoch']} random CIFAR-shaped images "
        f"({s['batches_per_epoch']} batches of {s['batch_size']}), {s['augment']}; "
        f"{s['timing']}. Device {s['device']}, {s['torch_threads']} torch thread(s), "
        f"torch {s['torch']}; load average {s['loadavg_before'][0]:.2f} before, "
        f"{s['loadavg_after'][0]:.2f} after, on {s['cpu_count']} cores.",
        "",
        "The ratio divides by independent training of the same number of full networks "
        "(OKDDip: 3 peers + leader; WML: 3 peers, whose heads are 1.0/0.75/0.5 wide).",
        "",
        "| method | baseline | best epoch (s) | median epoch (s) | ratio (best) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in result["methods"]:
        lines.append(
            f"| {r['method']} | {r['baseline']} | {r['epoch_s']:.2f} | "
            f"{r['epoch_s_median']:.2f} | {r['ratio']:.2f} |"
        )
    a = result["augmentation"]
    lines += [
        "",
        f"Augmentation cost per batch of {s['batch_size']}, relative to one ResNet-32 forward and "
        f"backward pass on it ({a['network_forward_backward_s'] * 1000:.0f} ms):",
        "",
        "| pipeline | ms per batch | ratio to one network |",
        "|---|---:|---:|",
    ]
    for p in a["pipelines"]:
        lines.append(
            f"| {p['pipeline']} | {p['batch_s'] * 1000:.1f} | {p['ratio_to_network']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
