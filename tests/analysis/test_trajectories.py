"""`landscape trajectories`: one PCA plane for several runs, checked against a direct SVD."""

import json
import shutil

import numpy as np
import pytest
import torch

from landscape.cli import main
from landscape.pipeline.runs import open_run


def test_joint_plane_matches_a_direct_svd_and_reports_the_rest(tiny_run_master, tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        shutil.copytree(tiny_run_master, tmp_path / name)
        runs.append(tmp_path / name)
    out = tmp_path / "joint"
    argv = [*map(str, runs), "--grid", "3", "--samples", "64", "--batch-size", "32"]
    assert main(["trajectories", *argv, "--out", str(out), "--no-progress"]) == 0
    assert "explain" in capsys.readouterr().out
    result = json.loads((out / "trajectories.json").read_text())
    assert (out / "report.html").exists()
    # Direct computation: stack every trained member's checkpoints, centre on the mean, SVD.
    rows, keys = [], []
    for path in runs:
        run = open_run(path)
        for member in run.networks:
            if run.roles[member] != "network":
                continue
            for ckpt in run.checkpoints:
                state = run.state_dict(ckpt, member)
                flat = torch.cat(
                    [state[n].double().flatten() for n in state if n in _parameter_names(run)]
                )
                rows.append(flat.numpy())
                keys.append((path.name, member, ckpt.epoch))
    x = np.stack(rows)
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    ratio = s**2 / (s**2).sum()
    assert result["explained_variance_ratio"] == pytest.approx(ratio[:2].tolist(), rel=1e-6)
    direct = centred @ vt[:2].T
    ours = np.array([[c["x"], c["y"]] for c in result["checkpoints"]])
    assert [(c["run"], c["member"], c["epoch"]) for c in result["checkpoints"]] == keys
    signs = np.sign(np.sum(direct * ours, axis=0))  # axes are defined up to a sign
    np.testing.assert_allclose(ours * signs, direct, atol=1e-6 * np.abs(direct).max())
    residual = np.linalg.norm(centred - direct @ vt[:2], axis=1)
    np.testing.assert_allclose([c["off_plane"] for c in result["checkpoints"]], residual, atol=1e-6)
    record = result["record"]
    shape = (len(record["y"]), len(record["x"]))
    assert min(shape) >= 3 and np.isfinite(record["train"]["loss"]).all()
    assert (
        np.asarray(record["train"]["loss"]).shape
        == np.asarray(record["test"]["loss"]).shape
        == shape
    )


def _parameter_names(run):
    model = run.build_model(run.networks[0])
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_runs_of_different_architectures_are_refused(tiny_run_master, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_run_master, a)
    shutil.copytree(tiny_run_master, b)
    info = json.loads((b / "run.json").read_text())
    info["arch"] = {**info["arch"], "kwargs": {**info["arch"].get("kwargs", {}), "width": 99}}
    (b / "run.json").write_text(json.dumps(info))
    assert main(["trajectories", str(a), str(b), "--out", str(tmp_path / "o")]) == 2
    assert "differ in architecture or data" in capsys.readouterr().err
