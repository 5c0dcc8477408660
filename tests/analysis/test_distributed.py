"""`landscape analyze` under torch.distributed (gloo, 2 CPU processes) equals a single process."""

import json
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from landscape.pipeline.analyze import AnalyzeSettings, analyze_run

SETTINGS = dict(
    samples=64, test_samples=64, batch_size=16, grid=3, k=2, tol=1e-6, analyses=("eigen", "surface")
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        analyze_run(run_dir, AnalyzeSettings(**SETTINGS), out=out, show_progress=False)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_match_one_process(tiny_run, tmp_path):
    single = analyze_run(
        tiny_run, AnalyzeSettings(**SETTINGS), out=tmp_path / "single", show_progress=False
    ).summary["records"]
    mp.spawn(
        _worker, args=(2, _free_port(), str(tiny_run), str(tmp_path / "dist")), nprocs=2, join=True
    )
    dist = json.loads((tmp_path / "dist" / "summary.json").read_text())["records"]
    assert set(dist) == set(single)
    for key, rec in single.items():
        if key.endswith("/eigen"):
            assert dist[key]["problem"]["world_size"] == 2
            assert dist[key]["problem"]["n_samples"] == rec["problem"]["n_samples"] == 64
            assert dist[key]["values"] == pytest.approx(rec["values"], rel=1e-4)
        else:
            np.testing.assert_allclose(dist[key]["train"]["loss"], rec["train"]["loss"], rtol=1e-5)
