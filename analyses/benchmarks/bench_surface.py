"""Surface throughput: our engine vs loss-landscapes vs the tomgoldstein/loss-landscape loop.

One run, one model, one dataset, one grid:

* model: CIFAR ResNet-32 (``okdph.models.create("resnet32")``, 0.47M parameters), random
  initialisation with BatchNorm running statistics calibrated on the benchmark data (so eval-mode
  activations are well scaled), float32, eval mode;
* data: ``--n`` (default 512) random uint8 32x32x3 images as CIFAR stores them, with uniform
  random labels from 10 classes (seed 0); our engine and the other tools get them as tensors after
  ``ToTensor`` and the CIFAR ``Normalize`` of the reference code;
* grid: 21 x 21 (``--quick``: 7 x 7) points ``i * 0.1`` in [-1, 1] along two seeded,
  filter-normalised Gaussian directions (1-D tensors zeroed), BatchNorm ``keep`` for all tools.

Tools:

* ``ours``: ``landscape.geometry.surface`` (the full grid, end to end) and the engine alone on a block of
  points (best of several rounds);
* ``loss-landscapes``: ``planar_interpolation`` with its ``Loss`` metric on one batch holding
  all the data, on corner/end models chosen so that its visited points are points of our grid;
* ``LL loop``: a re-creation of the evaluation loop of tomgoldstein/loss-landscape
  (``plot_surface.py``, ``evaluation.eval_loss``): weights copied in place with
  ``p.data.copy_(w + x * d1 + y * d2)``, eval mode, no_grad, a DataLoader (batch 128) over the
  data at every point, cross-entropy times batch size summed. Two variants: *as shipped* (its
  defaults: ``--threads 2`` loader worker processes, started again at every point, and a CIFAR
  dataset that converts each uint8 image with PIL, ``ToTensor`` and ``Normalize`` when it is
  read) and *favourable* (the normalised tensors held in memory, no worker processes), which
  isolates the network evaluation itself.

The two other tools are timed on a subset of the grid (their full grid would take tens of
minutes) and their rate is extrapolated; every tool's values at shared points are compared.
Timings are taken in interleaved rounds (every tool, and the matmul rate, once per round) since
the machine is shared: rates are best-of-rounds, speed-ups are also given as the median of
per-round paired ratios, and the load average of every round is recorded. Also measured: the
float32 matmul FLOP rate (2048 x 2048 ``torch.mm``, best of 3 per round, best over rounds), the
model's forward FLOPs (``FlopCounterMode``), and the engine's chunk size, memory format,
BatchNorm folding, worker threads and vmap settings.

Run: ``.venv/bin/python analyses/benchmarks/bench_surface.py [--quick]``; writes
``results/surface.json`` and ``results/surface.md`` next to this file.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from landscape.geometry.batchnorm import recalibrate
from landscape.geometry.directions import random_direction
from landscape.geometry.evaluate import Evaluator
from landscape.geometry.surface import grid_coordinates, surface
from landscape.geometry.weights import as_state, parameter_names
from okdph.models import create

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(fn, rounds: int) -> float:
    """Smallest wall time of ``rounds`` calls of ``fn``."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_rate(reps: int = 10) -> float:
    """Float32 FLOP/s of a 2048 x 2048 matrix product (best of ``reps``)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2048, 2048, generator=g), torch.randn(2048, 2048, generator=g)
    torch.mm(a, b)
    return 2 * 2048**3 / best_of(lambda: torch.mm(a, b), reps)


def forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one eval-mode forward of one sample (2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1])
    return float(counter.get_total_flops())


#: The CIFAR-10 normalisation of tomgoldstein/loss-landscape's ``dataloader.py``.
CIFAR_MEAN = [v / 255.0 for v in (125.3, 123.0, 113.9)]
CIFAR_STD = [v / 255.0 for v in (63.0, 62.1, 66.7)]


def cifar_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])


class CifarLike(Dataset):
    """What ``torchvision.datasets.CIFAR10`` does per item: PIL image from uint8 HWC, transform."""

    def __init__(self, images: np.ndarray, labels: list[int]):
        self.images, self.labels, self.transform = images, labels, cifar_transform()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def setup(n: int):
    """ResNet-32 with calibrated BatchNorm statistics, the data (uint8 images and their normalised
    tensors) and two filter-normalised directions."""
    torch.manual_seed(0)
    model = create("resnet32").eval()
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8).numpy()
    y = torch.randint(0, 10, (n,), generator=g)
    transform = cifar_transform()
    x = torch.stack([transform(img) for img in raw])
    state = recalibrate(
        model, as_state(model), [(x[i : i + 128], y[i : i + 128]) for i in range(0, n, 128)]
    )
    model.load_state_dict(state)
    names = parameter_names(model)
    gen = torch.Generator().manual_seed(0)
    d1 = random_direction(state, names, seed=gen)
    d2 = random_direction(state, names, seed=gen)
    return model, state, raw, x, y, d1, d2


# -- the tomgoldstein/loss-landscape loop -------------------------------------------------------
def ll_loop(model, state, d1, d2, loader, points):
    """Loss at each ``(a, b)`` as the reference ``plot_surface.py``/``evaluation.py`` computes it."""
    net = copy.deepcopy(model)
    params = list(net.named_parameters())
    weights = [state[n].clone() for n, _ in params]
    criterion = nn.CrossEntropyLoss()
    out = []
    for a, b in points:
        for (name, p), w in zip(params, weights, strict=True):
            p.data.copy_(w + a * d1[name] + b * d2[name])
        net.eval()
        total_loss, total = 0.0, 0
        with torch.no_grad():
            for inputs, targets in loader:
                outputs = net(inputs)
                total_loss += criterion(outputs, targets).item() * inputs.size(0)
                total += inputs.size(0)
        out.append(total_loss / total)
    return np.array(out)


def ll_loaders(raw: np.ndarray, x, y) -> dict[str, DataLoader]:
    """The reference loop's DataLoader as shipped, and a favourable one over in-memory tensors."""
    shipped = CifarLike(raw, y.tolist())
    return {
        "LL loop (as shipped)": DataLoader(shipped, batch_size=128, shuffle=False, num_workers=2),
        "LL loop": DataLoader(TensorDataset(x, y), batch_size=128, shuffle=False),
    }


# -- loss-landscapes ----------------------------------------------------------------------------
def lls_plane(model, state, d1, d2, x, y, step, half, steps, stride):
    """``planar_interpolation`` over ``steps x steps`` points that lie on our grid.

    Returns its loss matrix and the grid indices ``(i, j)`` of every entry: starting at the
    grid corner, row ``i`` is ``i * stride`` steps along ``d1``; even rows visit columns
    ``(1..steps) * stride`` and odd rows ``(0..steps-1) * stride`` (its serpentine walk).
    """
    import loss_landscapes
    from loss_landscapes.metrics import Loss

    def with_offset(a: float, b: float) -> nn.Module:
        net = copy.deepcopy(model)
        net.load_state_dict(
            {k: (v + a * d1[k] + b * d2[k]) if k in d1 else v for k, v in state.items()}
        )
        return net.eval()

    corner = -half * step
    span = steps * stride * step
    start = with_offset(corner, corner)
    end_one = with_offset(corner + span, corner)
    end_two = with_offset(corner, corner + span)
    metric = Loss(nn.CrossEntropyLoss(), x, y)
    values = loss_landscapes.planar_interpolation(start, end_one, end_two, metric, steps=steps)
    index = [
        [(i * stride, (j + 1) * stride if i % 2 == 0 else j * stride) for j in range(steps)]
        for i in range(steps)
    ]
    return np.asarray(values), index


def engine_sweep(model, state, d1, x, y, n_points: int, rounds: int, quick: bool):
    """Points per second of the engine under different chunk sizes, formats and parallelism."""
    n = x.shape[0]
    chunks = [32, 64, 128, n] if quick else [16, 32, 64, 128, 256, n]
    configs = [
        dict(chunk_size=c, memory_format=f, workers=1)
        for f in ("channels_last", "contiguous")
        for c in chunks
    ]
    configs += [dict(chunk_size=c, memory_format="channels_last", workers=2) for c in (32, 64, 128)]
    configs += [dict(chunk_size=128, memory_format="contiguous", workers=2)]
    configs += [dict(chunk_size=64, memory_format="channels_last", workers=2, fold_bn=False)]
    configs += [dict(chunk_size=64, memory_format="channels_last", workers=1, points_per_pass=2)]
    states = [
        {**state, **{k: state[k] + 0.01 * (i + 1) * d1[k] for k in d1}} for i in range(n_points)
    ]
    engines = [Evaluator(model, [(x, y)], **cfg) for cfg in configs]
    for ev in engines:
        ev.evaluate(states[:2])
    best = [float("inf")] * len(engines)
    for _ in range(rounds):  # interleaved, so load changes hit every configuration alike
        for i, ev in enumerate(engines):
            best[i] = min(best[i], best_of(lambda ev=ev: ev.evaluate(states), 1))
    rows = []
    for ev, t in zip(engines, best, strict=True):
        rows.append(
            {
                **ev.settings.to_dict(),
                "points_per_s": n_points / t,
                "images_per_s": n_points * n / t,
            }
        )
    return rows


def small_model_sweep(rounds: int):
    """vmap stacking vs worker threads on small models (justifies the engine's defaults)."""
    g = torch.Generator().manual_seed(1)
    rows = []
    cases = {
        "mlp 64-128-128-10, 1797 samples": (create("mlp"), torch.randn(1797, 64, generator=g)),
        "cnn_digits, 1797 samples": (create("cnn_digits"), torch.randn(1797, 1, 8, 8, generator=g)),
    }
    for name, (model, x) in cases.items():
        model.eval()
        y = torch.randint(0, 10, (x.shape[0],), generator=g)
        base = as_state(model)
        d = random_direction(base, parameter_names(model), seed=0)
        states = [{**base, **{k: base[k] + 0.01 * i * d[k] for k in d}} for i in range(32)]
        configs = [dict(points_per_pass=p, workers=w) for p, w in ((1, 1), (1, 2), (8, 1), (32, 1))]
        engines = [Evaluator(model, [(x, y)], **c) for c in configs]
        default = Evaluator(model, [(x, y)])
        for ev in engines:
            ev.evaluate(states[:8])
        best = [
            min(best_of(lambda ev=ev, states=states: ev.evaluate(states), 1) for _ in range(rounds))
            for ev in engines
        ]
        for c, t in zip(configs, best, strict=True):
            rows.append({"model": name, **c, "points_per_s": 32 / t})
        rows.append({"model": name, "default": default.settings.to_dict()})
    return rows


def head_to_head(model, state, d1, d2, raw, x, y, coords, steps, stride, rounds):
    """Interleaved rounds of: matmul rate, our engine, loss-landscapes, the LL loop.

    Each round times every tool once on the same block of grid points, so a change of machine
    load hits all of them; per-round ratios are paired comparisons.
    """
    half = (len(coords) - 1) // 2
    step = coords[1] - coords[0]
    visited = [
        (i * stride, (j + 1) * stride if i % 2 == 0 else j * stride)
        for i in range(steps)
        for j in range(steps)
    ]
    block = [(coords[i], coords[j]) for i, j in visited]
    ev = Evaluator(model, [(x, y)])
    block_states = [
        {**state, **{k: state[k] + a * d1[k] + b * d2[k] for k in d1}} for a, b in block
    ]
    ev.evaluate(block_states[:2])
    lls_plane(model, state, d1, d2, x[:2], y[:2], step, half, 1, 1)  # import and warm-up
    loaders = ll_loaders(raw, x, y)
    for loader in loaders.values():
        ll_loop(model, state, d1, d2, loader, block[:1])
    times = {"matmul": [], "ours": [], "loss-landscapes": [], **{k: [] for k in loaders}}
    loads = []
    values = {}
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        times["matmul"].append(2 * 2048**3 / matmul_rate(reps=3))
        times["ours"].append(best_of(lambda: ev.evaluate(block_states), 1))
        t = time.perf_counter()
        values["loss-landscapes"] = lls_plane(model, state, d1, d2, x, y, step, half, steps, stride)
        times["loss-landscapes"].append(time.perf_counter() - t)
        for key, loader in loaders.items():
            t = time.perf_counter()
            values[key] = ll_loop(model, state, d1, d2, loader, block)
            times[key].append(time.perf_counter() - t)
    return times, loads, values, visited, len(block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and grid, few rounds")
    parser.add_argument("--n", type=int, default=None, help="images (default 512; quick 256)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    args = parser.parse_args(argv)
    quick = args.quick
    n = args.n or (256 if quick else 512)
    points = 7 if quick else 21
    rounds = args.rounds or (2 if quick else 5)
    steps, stride = (3, 2) if quick else (3, 6)  # loss-landscapes: 3 x 3 points of our grid
    load_before = os.getloadavg()
    threads = torch.get_num_threads()

    model, state, raw, x, y, d1, d2 = setup(n)
    coords = grid_coordinates(1.0, points)
    flops = forward_flops(model, x)

    # Ours, end to end, the whole grid (one run: it is long, so a best-of is not affordable).
    t = time.perf_counter()
    ours = surface(
        model,
        state,
        [(x, y)],
        directions=[d1, d2],
        grid=[coords, coords],
        bn="keep",
        show_progress=False,
    )
    ours_full_s = time.perf_counter() - t
    full_load = os.getloadavg()[0]
    print(f"ours: {points}x{points} surface in {ours_full_s:.1f} s, {ours.engine}", flush=True)

    times, loads, values, visited, n_block = head_to_head(
        model, state, d1, d2, raw, x, y, coords, steps, stride, rounds
    )
    rate = 2 * 2048**3 / min(times["matmul"])
    rates = {k: n_block / min(v) for k, v in times.items() if k != "matmul"}
    rates["ours (full grid, end to end)"] = points * points / ours_full_s
    # Per round: the faster other tool's time over ours (a paired comparison under equal load).
    paired = [
        min(l1 / steps**2, l2 / n_block, l3 / n_block) / (o / n_block)
        for o, l1, l2, l3 in zip(
            times["ours"],
            times["loss-landscapes"],
            times["LL loop"],
            times["LL loop (as shipped)"],
            strict=True,
        )
    ]
    paired_shipped = [
        (s / n_block) / (o / n_block)
        for o, s in zip(times["ours"], times["LL loop (as shipped)"], strict=True)
    ]

    # Equal values at shared points. float32 cannot hold a loss of 1e5 to 1e-5 absolute (its
    # spacing there is 0.008), so differences are relative to max(1, |loss|).
    lls_vals, lls_index = values["loss-landscapes"]
    lls_flat = np.array([lls_vals[i][j] for i in range(steps) for j in range(steps)])
    lls_at = np.array([ours.loss[i, j] for row in lls_index for i, j in row])
    ours_block = np.array([ours.loss[i, j] for i, j in visited])
    diff = {
        "loss-landscapes": float(
            np.max(np.abs(lls_flat - lls_at) / np.maximum(1.0, np.abs(lls_at)))
        ),
        **{
            key: float(
                np.max(np.abs(values[key] - ours_block) / np.maximum(1.0, np.abs(ours_block)))
            )
            for key in ("LL loop", "LL loop (as shipped)")
        },
    }

    sweep = engine_sweep(
        model, state, d1, x, y, n_points=4, rounds=max(2, rounds // 2), quick=quick
    )
    small = small_model_sweep(max(2, rounds // 2))
    load_after = os.getloadavg()

    faster_other = max(rates["loss-landscapes"], rates["LL loop"], rates["LL loop (as shipped)"])
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": threads,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "load_1min_per_round": loads,
            "load_1min_after_full_surface": full_load,
        },
        "setup": {
            "model": "resnet32 (random init, BN statistics calibrated on the data)",
            "n_images": n,
            "grid": f"{points}x{points}",
            "radius": 1.0,
            "bn": "keep",
            "directions": "filter-normalised Gaussian, 1-D tensors zeroed, seeded generator",
            "rounds": rounds,
            "timed_points": {
                "ours": n_block,
                "loss-landscapes": steps * steps,
                "LL loop": n_block,
                "LL loop (as shipped)": n_block,
                "ours (full grid, end to end)": points * points,
            },
        },
        "matmul_flops_per_s": rate,
        "matmul_flops_per_s_per_round": [2 * 2048**3 / t for t in times["matmul"]],
        "forward_flops_per_image": flops,
        "seconds_per_round": times,
        "points_per_s": rates,
        "speedup_vs_faster_other": {
            "engine, best of rounds": rates["ours"] / faster_other,
            "engine, median of paired rounds": float(np.median(paired)),
            "engine, paired per round": paired,
            "full surface (one run) vs best of others": rates["ours (full grid, end to end)"]
            / faster_other,
            "engine vs reference loop as shipped, best of rounds": rates["ours"]
            / rates["LL loop (as shipped)"],
            "engine vs reference loop as shipped, median of paired rounds": float(
                np.median(paired_shipped)
            ),
        },
        "fraction_of_matmul_rate": {k: v * n * flops / rate for k, v in rates.items()},
        "max_loss_difference_vs_ours": diff,
        "difference_measure": "max |theirs - ours| / max(1, |ours|) over shared points",
        "ours_loss_range": [float(np.min(ours.loss)), float(np.max(ours.loss))],
        "values_equal_1e-5": all(v <= 1e-5 for v in diff.values()),
        "ours_settings": ours.engine.to_dict(),
        "ours_center_loss": ours.center_loss,
        "engine_sweep": sweep,
        "small_model_sweep": small,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "surface.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "surface.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    """The report: head-to-head table, roofline, engine sweep."""
    s, m = r["setup"], r["machine"]
    sp = r["speedup_vs_faster_other"]
    loads = m["load_1min_per_round"]
    lines = [
        "# Surface throughput (bench_surface.py)",
        "",
        f"{s['model']}, {s['n_images']} random uint8 CIFAR-format images, {s['grid']} grid, "
        f"BN `{s['bn']}`, float32 CPU, torch {m['torch']}, {m['cpu_count']} cores, "
        f"{m['threads']} threads. Shared machine: 1-min load average "
        f"{m['loadavg_before'][0]:.2f} at the start, {min(loads):.2f}-{max(loads):.2f} during the "
        f"{s['rounds']} interleaved rounds, {m['loadavg_after'][0]:.2f} at the end.",
        "",
        "| tool | points timed | points/s (best of rounds) | vs faster other |"
        " forward FLOP rate / matmul rate | max loss diff vs ours |",
        "|---|---|---|---|---|---|",
    ]
    faster = max(v for k, v in r["points_per_s"].items() if not k.startswith("ours"))
    timed = s["timed_points"]
    rows = (
        ("ours: engine on the shared block of points", "ours"),
        ("ours: `surface()` full grid, end to end, one run", "ours (full grid, end to end)"),
        ("loss-landscapes `planar_interpolation`", "loss-landscapes"),
        ("tomgoldstein/loss-landscape loop (re-created), as shipped", "LL loop (as shipped)"),
        ("tomgoldstein/loss-landscape loop (re-created), favourable", "LL loop"),
    )
    for tool, key in rows:
        diff = r["max_loss_difference_vs_ours"].get(key)
        lines.append(
            f"| {tool} | {timed[key]} | {r['points_per_s'][key]:.3f} | "
            f"{r['points_per_s'][key] / faster:.2f}x | "
            f"{100 * r['fraction_of_matmul_rate'][key]:.0f}% | "
            f"{'' if diff is None else f'{diff:.1e}'} |"
        )
    lines += [
        "",
        f"Speed-up of the engine over the faster other tool: {sp['engine, best of rounds']:.2f}x "
        f"(best of rounds), {sp['engine, median of paired rounds']:.2f}x (median of per-round "
        f"ratios: {', '.join(f'{v:.2f}' for v in sp['engine, paired per round'])}). Over the "
        f"reference loop as shipped: "
        f"{sp['engine vs reference loop as shipped, best of rounds']:.2f}x (best of rounds), "
        f"{sp['engine vs reference loop as shipped, median of paired rounds']:.2f}x (median).",
        "As shipped: two DataLoader worker processes (its `--threads` default), started at "
        "every point, and per-image PIL + `ToTensor` + `Normalize` (torchvision's CIFAR10). "
        "Favourable: the same loop over normalised tensors in memory, no worker processes.",
        f"Matmul rate (2048x2048 float32 `torch.mm`, best over all rounds): "
        f"{r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s; ResNet-32 forward: "
        f"{r['forward_flops_per_image'] / 1e6:.1f} MFLOP per image.",
        f"Losses on the grid range from {r['ours_loss_range'][0]:.3g} to "
        f"{r['ours_loss_range'][1]:.3g}; loss differences are `|theirs - ours| / max(1, |ours|)`; "
        f"all equal to 1e-5: {r['values_equal_1e-5']}.",
        f"Our default settings: chunk {r['ours_settings']['chunk_size']}, "
        f"{r['ours_settings']['memory_format']}, BN folded: {r['ours_settings']['fold_bn']}, "
        f"workers {r['ours_settings']['workers']}, points per pass "
        f"{r['ours_settings']['points_per_pass']}.",
        "",
        "## Engine settings (ResNet-32, 4 points, best of interleaved rounds)",
        "",
        "| chunk | memory format | BN folded | workers | points/pass | images/s | points/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["engine_sweep"]:
        lines.append(
            f"| {row['chunk_size']} | {row['memory_format']} | {row['fold_bn']} | "
            f"{row['workers']} | {row['points_per_pass']} | {row['images_per_s']:.0f} | "
            f"{row['points_per_s']:.3f} |"
        )
    lines += [
        "",
        "## Small models: vmap stacking vs worker threads (32 points)",
        "",
        "| model | points/pass | workers | points/s |",
        "|---|---|---|---|",
    ]
    for row in r["small_model_sweep"]:
        if "default" in row:
            d = row["default"]
            lines.append(
                f"| {row['model']} (engine default) | {d['points_per_pass']} | {d['workers']} | |"
            )
        else:
            lines.append(
                f"| {row['model']} | {row['points_per_pass']} | {row['workers']} | "
                f"{row['points_per_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
