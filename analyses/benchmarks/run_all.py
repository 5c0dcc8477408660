"""Run every benchmark in this folder, one after the other (each writes results/<name>.{json,md}).

    .venv/bin/python analyses/benchmarks/run_all.py [--quick]

Benchmarks time against each other on one machine, so run them when nothing else is running.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = [
    "bench_hessian.py",
    "bench_surface.py",
    "bench_trainer.py",
    "bench_methods.py",
    "bench_tracking.py",
    "bench_memory.py",
]


def main(argv: list[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name), *extra]).returncode != 0:
            failed.append(name)
    for name in BENCHMARKS:
        md = HERE / "results" / name.replace("bench_", "").replace(".py", ".md")
        if md.exists():
            print(f"\n{md.read_text()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
