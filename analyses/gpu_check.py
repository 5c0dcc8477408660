"""GPU check: the training and analysis paths on CUDA, each compared with the CPU float32 result.

Runs in a few minutes on one GPU and needs nothing from the network: it writes CIFAR-shaped data
(random images in CIFAR-10's own pickle format) to a temporary folder. Checks, with stated
tolerances:

1. training: two batches of OKDPH (ResNet-32, two students) on CUDA and on the CPU, AMP off and
   TF32 off: the final weights agree to 1e-3 relative; then one epoch with bf16 autocast and
   channels-last for throughput (images/s);
2. top-5 Hessian eigenvalues of a trained student (tol 1e-4): agree to 1e-3 relative (HVPs/s);
3. Hutch++ trace (same probes): within 3 combined standard errors or 1e-3 relative;
4. an 11x11 random loss surface: losses agree to 1e-3 relative (points/s);

and prints peak CUDA memory. Exit code 0 when every check passes (or when there is no CUDA
device: it says so in one line), 1 otherwise. ``--device cpu --smoke`` exercises every path on
the CPU (against itself) at a tiny size, which is what the test suite runs.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def write_cifar(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Random uint8 images and labels in CIFAR-10's pickle layout under ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per_file = max(1, n_train // 5)
    for name, n in [(f"data_batch_{i}", per_file) for i in range(1, 6)] + [("test_batch", n_test)]:
        entry = {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=n).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def _train(root: Path, out: Path, device: str, batches: int, smoke: bool, fast: bool):
    from okdph.config import apply_overrides
    from okdph.presets import preset_config
    from okdph.trainer import train

    overrides = [
        f"data.root={root}",
        "epochs=1",
        f"batch_size={32 if smoke else 128}",
        f"device={device}",
        f"amp={'true' if fast else 'false'}",
        f"channels_last={'true' if fast else 'false'}",
    ]
    if smoke:
        overrides.append("model.widths=(4,8,8)")  # a narrow ResNet-32, for the CPU self-check
    cfg = apply_overrides(preset_config("cifar10-resnet32"), overrides)
    start = time.perf_counter()
    run, _ = train(cfg, out, progress=False, max_batches=batches, overwrite=True)
    seconds = time.perf_counter() - start
    ckpt = torch.load(run.path / "checkpoints" / "epoch_0001.pt", weights_only=True)
    return run, ckpt["models"], seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (self-check)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (for the test suite)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False  # curvature compared at float32 precision
    torch.backends.cudnn.allow_tf32 = False
    from landscape import hessian_trace, surface, top_eigenvalues
    from landscape.pipeline.runs import open_run

    dev, smoke = args.device, args.smoke
    failures: list[str] = []

    def check(name: str, ok: bool, detail: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if not ok:
            failures.append(name)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp) / "data"
        write_cifar(root, n_train=320 if smoke else 5120, n_test=64 if smoke else 1000)
        # 1. training, exact path, then the fast path for throughput
        _, on_dev, _ = _train(root, Path(tmp) / "dev", dev, 2, smoke, fast=False)
        _, on_cpu, _ = _train(root, Path(tmp) / "cpu", "cpu", 2, smoke, fast=False)
        worst = max(
            _relative(on_dev[m][k].float().cpu().numpy(), on_cpu[m][k].float().numpy())
            for m in on_cpu
            for k in on_cpu[m]
            if on_cpu[m][k].is_floating_point()
        )
        check("training (2 batches, fp32)", worst <= 1e-3, f"max relative weight gap {worst:.1e}")
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        run, _, seconds = _train(root, Path(tmp) / "fast", dev, 0, smoke, fast=True)
        n_images = (320 if smoke else 5120) // 5 * 5
        print(
            f"     training throughput (bf16 autocast, channels-last): "
            f"{2 * n_images / seconds:.0f} images/s incl. evaluation"
        )
        # 2-4. curvature and a surface of a trained student, on a fixed subset
        analysed = open_run(run.path)
        model = analysed.build_model("student_0")
        model.load_state_dict(on_cpu["student_0"])
        model.eval()
        from okdph.data import load_dataset

        ds = load_dataset("cifar10", "cpu", root=str(root))
        n = 32 if smoke else 256
        batch = [(ds.inputs("train", torch.arange(n)), ds.targets("train", torch.arange(n)))]
        results = {}
        for where in (dev, "cpu"):
            start = time.perf_counter()
            spec = top_eigenvalues(
                model, F.cross_entropy, batch, k=5, tol=1e-4, device=where, show_progress=False
            )
            eig_s = time.perf_counter() - start
            start = time.perf_counter()
            trace = hessian_trace(
                model, F.cross_entropy, batch, rtol=0.05, device=where, show_progress=False
            )
            tr_s = time.perf_counter() - start
            start = time.perf_counter()
            surf = surface(
                model,
                None,
                batch,
                grid=(1.0, 5 if smoke else 11),
                device=where,
                show_progress=False,
            )
            sf_s = time.perf_counter() - start
            results[where] = (spec, eig_s, trace, tr_s, surf, sf_s)
        spec, eig_s, trace, tr_s, surf, sf_s = results[dev]
        ref_spec, _, ref_trace, _, ref_surf, _ = results["cpu"]
        gap = _relative(np.asarray(spec.values), np.asarray(ref_spec.values))
        check(
            "top-5 eigenvalues",
            gap <= 1e-3,
            f"relative gap {gap:.1e}; {spec.n_hvp / eig_s:.1f} HVPs/s",
        )
        # The same solve with its Lanczos basis in host memory (the small-GPU setting).
        hosted = top_eigenvalues(
            model,
            F.cross_entropy,
            batch,
            k=5,
            tol=1e-4,
            device=dev,
            basis_device="cpu",
            show_progress=False,
        )
        hgap = _relative(np.asarray(hosted.values), np.asarray(spec.values))
        check("top-5, basis on the host", hgap <= 1e-3, f"relative gap {hgap:.1e}")
        allowed = max(
            3 * float(np.hypot(trace.stderr, ref_trace.stderr)), 1e-3 * abs(ref_trace.value)
        )
        check(
            "trace",
            abs(trace.value - ref_trace.value) <= allowed,
            f"{trace.value:.5g} vs {ref_trace.value:.5g} (allowed {allowed:.2g}); "
            f"{trace.n_hvp / tr_s:.1f} HVPs/s",
        )
        sgap = _relative(np.asarray(surf.loss), np.asarray(ref_surf.loss))
        check(
            "11x11 surface",
            sgap <= 1e-3,
            f"relative gap {sgap:.1e}; {np.asarray(surf.loss).size / sf_s:.1f} points/s",
        )
        if dev.startswith("cuda"):
            print(f"     peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print("gpu_check: " + ("all checks passed" if not failures else f"FAILED: {failures}"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
