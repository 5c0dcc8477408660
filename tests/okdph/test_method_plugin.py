"""The method of the docs page "Adding a method", installed as a distribution with its entry
point, exactly as printed there: listed, trained through ``okdph train``, and its loss equal to
the formula it records."""

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from okdph.cli import main
from okdph.methods.base import StepContext, build_method

DOCS = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "adding-a-method.md"


def _code_block(text: str, language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", text, re.S)
    assert match, f"no {language} block"
    return match.group(1)


@pytest.fixture
def smooth_peers(tmp_path):
    """What pip leaves in site-packages: the page's module and a dist-info declaring the page's
    entry point."""
    page = DOCS.read_text()
    (tmp_path / "smooth_peers.py").write_text(_code_block(page, "python"))
    info = tmp_path / "smooth_peers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: smooth-peers\nVersion: 0.1\n")
    declared = _code_block(page, "toml").replace('"', "")
    (info / "entry_points.txt").write_text("[okdph.methods]\n" + declared.split("]\n", 1)[1])
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.path.remove(str(tmp_path))
    sys.modules.pop("smooth_peers", None)


def test_the_documented_method_is_listed_and_trains(smooth_peers, tmp_path, capsys):
    assert main(["list", "methods"]) == 0
    listed = capsys.readouterr().out
    assert "smooth_peers" in listed and "smoothing" in listed
    out = tmp_path / "run"
    argv = ["train", "--preset", "demo", "--set", "method=smooth_peers", "method.smoothing=0.05"]
    assert main([*argv, "--dry-run", "--out", str(out), "--no-progress"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["method"]["name"] == "smooth_peers"
    assert info["method"]["config"]["smoothing"] == 0.05
    assert "student_i/kd" in info["method"]["loss_terms"]
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "train/student_1/kd" in logged
    capsys.readouterr()
    bad = ["train", "--preset", "demo", "--set", "method=smooth_peers", "method.smoothing=1.5"]
    assert main([*bad, "--dry-run", "--out", str(tmp_path / "bad")]) == 2
    assert "method.smoothing must be in [0, 1)" in capsys.readouterr().err


def test_the_documented_loss_is_its_formula(smooth_peers):
    torch.manual_seed(0)
    method = build_method(
        "smooth_peers",
        {"smoothing": 0.1, "weight": 0.5, "temperature": 2.0},
        lambda **kw: nn.Linear(5, 3),
        num_students=3,
    )
    views = [torch.randn(8, 5) for _ in range(3)]
    y = torch.randint(0, 3, (8,))
    ctx = StepContext(epoch=0, batch=0, step=0, epochs=1, rng=None)  # type: ignore[arg-type]
    loss, terms = method.compute_loss(views, y, ctx)
    z = [net(x) for net, x in zip(method.students, views)]
    expected = 0.0
    for i in range(3):
        ce = F.cross_entropy(z[i], y, label_smoothing=0.1)
        mean_peer = torch.stack([z[j] for j in range(3) if j != i]).mean(0)
        p = F.softmax(mean_peer / 2.0, 1)
        kd = 4.0 * (p * (p.log() - F.log_softmax(z[i] / 2.0, 1))).sum(1).mean()
        expected = expected + ce + 0.5 * kd
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert set(terms) >= {"student_2/ce", "student_2/kd", "student_2/loss", "loss"}
