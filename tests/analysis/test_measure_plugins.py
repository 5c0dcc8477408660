"""Measures and models from outside the package: a measure from an installed distribution (entry
point ``landscape.measures``) runs through analyze, the report and compare; a network defined in a
file of the user's runs through ``--arch package.module:callable``."""

import importlib
import json
import math
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from analysis_cases import FAST

from landscape.cli import main
from landscape.core.errors import LandscapeError
from landscape.measures import registry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "adding-a-measure.md"


def _code_block(text: str, language: str) -> str:
    """The first fenced block of ``language`` in a Markdown text."""
    match = re.search(rf"```{language}\n(.*?)```", text, re.S)
    assert match, f"no {language} block"
    return match.group(1)


#: The measure of the docs page "Adding a measure", exactly as printed there.
TOY_MEASURE = _code_block(DOCS.read_text(), "python")


def _install(root, name, module_text, entry_points):
    """What pip leaves in site-packages: the module and a dist-info with entry_points.txt."""
    (root / f"{name}.py").write_text(module_text)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def toy_measure(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    declared = _code_block(DOCS.read_text(), "toml")  # the page's pyproject lines
    entry = declared.split("]\n", 1)[1].replace('"', "")
    _install(site, "toy_entropy", TOY_MEASURE, f"[landscape.measures]\n{entry}")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    registry.reload()
    yield
    sys.path.remove(str(site))
    sys.modules.pop("toy_entropy", None)
    registry.reload()


CLI_FAST = [
    "--samples",
    str(FAST["samples"]),
    "--batch-size",
    str(FAST["batch_size"]),
    "--no-progress",
]


def test_an_installed_measure_runs_through_analyze_report_and_compare(
    toy_measure, tiny_run, tmp_path, capsys
):
    assert "entropy" in registry.measures()
    argv = ["analyze", str(tiny_run), "--analyses", "fit,entropy", *CLI_FAST]
    assert main([*argv, "--entropy-temperature", "2"]) == 0
    out = tiny_run / "analysis"
    summary = json.loads((out / "summary.json").read_text())
    record = summary["records"]["epoch_0002/student_0/entropy"]
    assert 0 <= record["value"] <= math.log(10) and record["n"] == FAST["samples"]
    rows = {r["member"]: r for r in summary["flatness"]["2"]}
    assert (
        rows["hybrid"]["mean_entropy"] == summary["records"]["epoch_0002/hybrid/entropy"]["value"]
    )
    assert summary["settings"]["entropy_temperature"] == 2.0
    # Its own figure and section in the report, its column in the flatness table.
    assert (out / "figures" / "entropy_epoch_0002.json").exists()
    report = (out / "report.html").read_text()
    assert "Predictive entropy at epoch 2" in report and "mean entropy" in report
    # A changed setting of the plug-in recomputes its pieces only.
    capsys.readouterr()
    assert main([*argv, "--entropy-temperature", "1"]) == 0
    assert "pieces: 6 (3 computed now)" in capsys.readouterr().out
    # Its bad value is one sentence.
    assert main([*argv, "--entropy-temperature", "-1"]) == 2
    assert "--entropy-temperature must be positive" in capsys.readouterr().err
    # landscape compare gathers its field per method.
    compare_out = tmp_path / "cmp"
    assert main(["compare", str(tiny_run), "--out", str(compare_out)]) == 0
    result = json.loads((compare_out / "compare.json").read_text())
    students = result["methods"]["okdph"]["students"]
    assert students["mean_entropy"]["n"] == 1
    assert result["invariant_to_rescaling"]["mean_entropy"] is True


def test_a_broken_measure_entry_point_is_one_sentence(tmp_path, tiny_run, capsys):
    site = tmp_path / "site"
    site.mkdir()
    _install(
        site,
        "toy_broken",
        "raise ImportError('no such thing')\n",
        "[landscape.measures]\nbroken = toy_broken:Nothing\n",
    )
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        with pytest.raises(LandscapeError, match="could not load entry point 'broken'"):
            registry.reload()
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("toy_broken", None)
        registry.reload()


NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    """Nobody's registry knows me."""

    def __init__(self, hidden=6):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.head(self.body(x))
'''


def test_a_users_network_by_import_path_matches_a_dense_hessian(tmp_path, monkeypatch, capsys):
    from okdph.data import load_dataset

    package = tmp_path / "src" / "mynets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    sys.modules.pop("mynets", None)
    sys.modules.pop("mynets.nets", None)
    import mynets.nets

    torch.manual_seed(0)
    net = mynets.nets.Net(hidden=5)
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "mine.pt")
    argv = [
        "analyze", str(folder), "--arch", "mynets.nets:Net:hidden=5", "--data", "digits",
        "--analyses", "eigen", "--k", "1", "--tol", "1e-6", "--certify-top", "0",
        "--samples", "100000", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((folder / "analysis" / "summary.json").read_text())
    assert summary["run"]["arch"] == {"name": "mynets.nets:Net", "kwargs": {"hidden": 5}}
    top = summary["flatness"]["0"][0]["lambda_max"]

    ds = load_dataset("digits")
    x, y = ds.inputs("train"), ds.targets("train")
    params = {k: v.detach().double() for k, v in net.named_parameters()}
    names, shapes = list(params), [p.shape for p in params.values()]
    flat = torch.cat([p.reshape(-1) for p in params.values()])

    def loss(theta):
        chunks, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            chunks[n] = theta[i : i + s.numel()].reshape(s)
            i += s.numel()
        logits = torch.func.functional_call(net.double(), chunks, (x.double(),))
        return torch.nn.functional.cross_entropy(logits, y)

    dense = torch.autograd.functional.hessian(loss, flat)
    expected = float(torch.linalg.eigvalsh(dense).max())
    assert abs(top - expected) <= 1e-4 * abs(expected)


@pytest.mark.slow
def test_a_torchvision_model_by_import_path_on_cifar_format_files(tmp_path):
    import torchvision

    from tests.okdph.test_data import _write_cifar

    _write_cifar(tmp_path / "data", "cifar10")
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), folder / "rn18.pt")
    argv = [
        "analyze", str(folder), "--arch", "torchvision.models:resnet18", "--data", "cifar10",
        "--data-root", str(tmp_path / "data"), "--analyses", "fit", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((folder / "analysis" / "summary.json").read_text())
    # The number of classes came from the data and reached torchvision's factory.
    assert summary["run"]["arch"]["kwargs"] == {"num_classes": 10}
    fit = summary["records"]["epoch_0000/rn18/fit"]
    assert fit["train"]["n"] == 5 * 20 and fit["test"]["n"] == 10  # five training batches


def test_a_state_dict_folder_gets_its_test_accuracy_from_fit(tmp_path, capsys):
    torch.manual_seed(0)
    folder = tmp_path / "sd"
    folder.mkdir()
    from okdph.models import create

    torch.save(create("mlp", hidden=(8,)).state_dict(), folder / "net.pt")
    argv = ["analyze", str(folder), "--arch", "mlp:hidden=(8,)", "--data", "digits"]
    assert main([*argv, "--analyses", "fit", "--samples", "64", "--no-progress"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((folder / "analysis" / "summary.json").read_text())
    row = summary["flatness"]["0"][0]
    assert (
        row["test_acc"]
        == row["test_accuracy"]
        == summary["records"]["epoch_0000/net/fit"]["test"]["accuracy"]
    )
    assert f"{row['test_acc']:.4f}" in out and "sharp@0.05" in out  # which sharpness it is
