"""Peak memory of the large-model analyses: a WRN-20-8 top-5 eigen-solve and a ResNet-110 surface.

Each case runs in a fresh process (so one case's high-water mark cannot leak into another) on
CIFAR-shaped random images, and reports the peak resident memory above the process's footprint
once the model and data are built (CPU), or the peak of torch's CUDA allocator (GPU), next to
the budget the analysis states: Lanczos keeps ``basis_size x n_params`` float32 numbers (default
basis 60 for five eigenvalues, the minimum ``k + 2``), which ``basis_device="cpu"`` (``landscape
analyze --lanczos-basis cpu``) moves off a small GPU.

    .venv/bin/python analyses/benchmarks/bench_memory.py [--quick] [--threads N] [--device cpu]

Writes results/memory.json and results/memory.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
MiB = 2**20


def _rss() -> float:
    """Current resident memory of this process, in bytes."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def run_case(case: str, images: int, device: str, basis_size: int | None) -> dict:
    """One analysis in this process; peak memory above the built model and data, in MiB."""
    import torch
    import torch.nn.functional as F

    from landscape import surface, top_eigenvalues
    from okdph.models import create

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(images, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (images,), generator=gen)
    arch = "wrn_20_8" if case == "eigen" else "resnet110"
    torch.manual_seed(0)
    model = create(arch, num_classes=10).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    x, y = x.to(device), y.to(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss()
    start = time.perf_counter()
    if case == "eigen":
        spec = top_eigenvalues(
            model,
            F.cross_entropy,
            [(x, y)],
            k=5,
            tol=1e-3,
            basis_size=basis_size,
            device=device,
            show_progress=False,
        )
        detail = {"n_hvp": spec.n_hvp, "converged": bool(spec.converged.all())}
    else:
        surf = surface(
            model, None, [(x, y)], grid=(1.0, 11), bn="keep", device=device, show_progress=False
        )
        detail = {"points": int(np.asarray(surf.loss).size)}
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "case": case,
        "arch": arch,
        "images": images,
        "device": device,
        "n_params": n_params,
        "basis_size": basis_size,
        "peak_above_base_mib": (peak - base) / MiB,
        "weights_mib": n_params * 4 / MiB,
        "seconds": seconds,
        **detail,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    parser.add_argument("--images", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--basis-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(args.case, args.images, args.device, args.basis_size)))
        return 0
    eig_images, surf_images = (4, 32) if args.quick else (8, 64)
    cases = [
        ("eigen", eig_images, None),
        ("eigen", eig_images, 12),
        ("eigen", 2 * eig_images, 12),
        ("surface", surf_images, None),
        ("surface", 2 * surf_images, None),
    ]
    rows = []
    for case, images, basis in cases:
        cmd = [sys.executable, __file__, "--case", case, "--images", str(images)]
        cmd += ["--threads", str(args.threads), "--device", args.device]
        cmd += ["--basis-size", str(basis)] if basis else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        if case == "eigen":
            row["basis_mib"] = (basis or 60) * row["n_params"] * 4 / MiB
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {
        "threads": args.threads,
        "device": args.device,
        "loadavg": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    what = "resident memory" if args.device == "cpu" else "CUDA allocator peak"
    lines = [
        "# Peak memory of large-model analyses",
        "",
        f"Device {args.device}, {args.threads} thread(s); peak {what} above the process once the "
        "model and the CIFAR-shaped images are built, each case in a fresh process. "
        "Lanczos basis: the most it can hold, basis_size x parameters x 4 bytes; its rows are "
        "filled as the solve goes, and on the CPU only filled rows become resident (the solves "
        "here converge in fewer products than 60, so basis 60 and basis 12 peak alike).",
        "",
        "| analysis | model (parameters) | images | weights (MiB) | Lanczos basis (MiB) | "
        "peak above base (MiB) | time (s) | products / points |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = (
            f"top-5 eigenvalues, basis {r['basis_size'] or 60}"
            if r["case"] == "eigen"
            else "11x11 surface"
        )
        lines.append(
            f"| {label} | {r['arch']} ({r['n_params'] / 1e6:.2f}M) | {r['images']} | "
            f"{r['weights_mib']:.0f} | {r.get('basis_mib', 0):.0f} | "
            f"{r['peak_above_base_mib']:.0f} | {r['seconds']:.0f} | "
            f"{r.get('n_hvp', r.get('points'))} |"
        )
    (RESULTS / "memory.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
