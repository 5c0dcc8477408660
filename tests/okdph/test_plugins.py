"""Models, datasets and methods as plug-ins: import paths ``package.module:callable``, the
``okdph.models``/``okdph.datasets``/``okdph.methods`` entry-point groups (a fake installed
distribution on ``sys.path``), the number of classes taken from the data, and the sweep's modules."""

import ast
import json
import sys
from pathlib import Path

import pytest
import torch

from okdph.cli import main
from okdph.config import ConfigError, apply_overrides
from okdph.data import DataError, TensorDataset, load_dataset
from okdph.models import ModelError, UnknownModelError, create, factory, parse_model_spec
from okdph.presets import preset_config
from okdph.session import build_session
from okdph.sweep import Study, StudyFileError, open_study, read_study

PLUGIN = "toy_okdph_plugin"
PLUGIN_SOURCE = '''
import torch
from torch import nn

from okdph.data import TensorDataset
from okdph.methods.independent import Independent


class Net(nn.Module):
    def __init__(self, num_classes=10, input_dim=64, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(input_dim, width), nn.ReLU())
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classifier(self.body(x))


def build(num_classes=10, input_dim=64, width=8):
    return Net(num_classes, input_dim, width)


def not_a_model(num_classes=10):
    return "a string"


def blobs(n=96, classes=3, seed=0):
    """Gaussian blobs as length-16 signals, {classes} classes: a (train, test) tuple."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(2 * n) % classes
    x = torch.randn(2 * n, 16, generator=gen) + 3.0 * torch.nn.functional.one_hot(y, 16)
    return (x[:n], y[:n]), (x[n:], y[n:])


def blobs_dataset(n=96):
    (x, y), (tx, ty) = blobs(n)
    return TensorDataset("blobs", "signal", x, y, tx, ty, num_classes=3)


def images():
    x = torch.rand(20, 3, 4, 4)
    return (x[:12], torch.tensor([0, 1] * 6)), (x[12:], torch.tensor([4, 0] * 4))


def float_labels():
    return (torch.rand(4, 2), torch.rand(4)), (torch.rand(4, 2), torch.rand(4))


def a_list():
    return [1, 2, 3]


class ToyIndependent(Independent):
    name = "toy_independent"


class Misnamed(Independent):
    name = "something_else"


NOT_CALLABLE = 3
'''
ENTRY_POINTS = f"""
[okdph.models]
toy_net = {PLUGIN}:build
broken_net = {PLUGIN}:missing

[okdph.datasets]
toy_blobs = {PLUGIN}:blobs_dataset

[okdph.methods]
toy_independent = {PLUGIN}:ToyIndependent
misnamed = {PLUGIN}:Misnamed
"""
TINY = ["epochs=1", "augment=none", "batch_size=64"]


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """The plug-in module importable from ``tmp_path`` (forgotten again afterwards)."""
    (tmp_path / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(PLUGIN, None)


@pytest.fixture
def toy_dist(plugin_module):
    """A fake installed distribution ``toy-dist 0.1`` declaring entry points of every group."""
    info = plugin_module / "toy_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return plugin_module


def _one_sentence(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text
    return text


# ---- models from import paths ----------------------------------------------------------------


def test_a_model_from_an_import_path(plugin_module):
    model = create(f"{PLUGIN}:build", num_classes=5, input_dim=12)
    assert model(torch.randn(3, 12)).shape == (3, 5)
    assert factory(f"{PLUGIN}:Net") is sys.modules[PLUGIN].Net
    assert create(f"{PLUGIN}:Net", num_classes=2, input_dim=4).classifier.out_features == 2


def test_a_torchvision_model_from_its_import_path():
    model = create("torchvision.models:resnet18", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "name, kwargs, error, fragment",
    [
        ("no_such_pkg.models:Net", {}, UnknownModelError, "no module named 'no_such_pkg'"),
        (f"{PLUGIN}:Missing", {}, UnknownModelError, f"module '{PLUGIN}' has no attribute"),
        (f"{PLUGIN}:NOT_CALLABLE", {}, UnknownModelError, "is a int, not a callable"),
        (f"{PLUGIN}:not_a_model", {}, ModelError, "returned a str, not a torch.nn.Module"),
        (f"{PLUGIN}:build", {"depth": 3}, ModelError, "does not accept these arguments"),
    ],
)
def test_import_path_errors_are_one_sentence(plugin_module, name, kwargs, error, fragment):
    with pytest.raises(error) as caught:
        create(name, **kwargs)
    assert fragment in _one_sentence(caught.value)


def test_model_specs_split_names_import_paths_and_arguments():
    assert parse_model_spec("resnet32") == ("resnet32", {})
    assert parse_model_spec("cnn_digits:width=32,bn=true") == (
        "cnn_digits",
        {"width": 32, "bn": True},
    )
    assert parse_model_spec("torchvision.models:resnet18") == ("torchvision.models:resnet18", {})
    assert parse_model_spec("pkg.mod:Net:width=32,widths=(16,32)") == (
        "pkg.mod:Net",
        {"width": 32, "widths": (16, 32)},
    )
    assert parse_model_spec("my_models:Net") == ("my_models:Net", {})
    for bad in ("cnn_digits:width", "pkg.mod:Net:width", ":width=3"):
        with pytest.raises(ModelError):
            parse_model_spec(bad)


def test_a_model_string_with_arguments_in_the_config_builds_that_model(plugin_module):
    cfg = apply_overrides(
        preset_config("demo"),
        [*TINY, f"model={PLUGIN}:build:width=5", "method=independent", "num_students=1"],
    )
    session = build_session(cfg)
    assert session.arch == {
        "name": f"{PLUGIN}:build",
        "kwargs": {"num_classes": 10, "input_dim": 64, "width": 5},
    }
    assert session.method.students[0].classifier.in_features == 5


# ---- datasets from import paths --------------------------------------------------------------


def test_a_dataset_from_an_import_path_as_train_and_test_tensors(plugin_module):
    ds = load_dataset(f"{PLUGIN}:blobs", n=30, classes=3)
    assert ds.name == f"{PLUGIN}:blobs" and ds.kind == "signal" and ds.input_shape == (16,)
    assert ds.num_classes == 3 and (len(ds.train_y), len(ds.test_y)) == (30, 30)
    assert (ds.scale, ds.mean, ds.std) == (1.0, (0.0,), (1.0,))
    assert torch.equal(ds.inputs("train"), ds.train_x)
    assert ds.meta["import_path"] == f"{PLUGIN}:blobs"
    images = load_dataset(f"{PLUGIN}:images")
    # Classes over both splits: label 4 is in the test split only.
    assert images.kind == "image" and images.num_classes == 5
    assert images.train_y.dtype == torch.int64


def test_a_dataset_from_an_import_path_as_a_tensor_dataset(plugin_module):
    ds = load_dataset(f"{PLUGIN}:blobs_dataset", n=12)
    assert isinstance(ds, TensorDataset) and ds.name == "blobs" and ds.num_classes == 3
    assert ds.meta["import_path"] == f"{PLUGIN}:blobs_dataset"


@pytest.mark.parametrize(
    "name, fragment",
    [
        (f"{PLUGIN}:a_list", "returned a list, not a TensorDataset"),
        (f"{PLUGIN}:float_labels", "labels must be non-negative integers"),
        (f"{PLUGIN}:nothing", f"module '{PLUGIN}' has no attribute 'nothing'"),
        ("no_such_pkg.data:load", "no module named 'no_such_pkg'"),
    ],
)
def test_dataset_import_path_errors_are_one_sentence(plugin_module, name, fragment):
    with pytest.raises(DataError) as caught:
        load_dataset(name)
    assert fragment in _one_sentence(caught.value)


# ---- the number of classes comes from the data -------------------------------------------------


def test_training_on_three_classes_builds_three_class_classifiers(plugin_module, tmp_path):
    overrides = [*TINY, f"data={PLUGIN}:blobs", "model=mlp", "model.hidden=(8,)"]
    session = build_session(apply_overrides(preset_config("demo"), overrides))
    assert session.data.num_classes == 3
    for net in session.method.nets.values():
        assert net(session.data.inputs("test")[:4]).shape == (4, 3)
    out = tmp_path / "run"
    assert main(["train", "--set", *overrides, "--out", str(out), "--no-progress"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["data"]["num_classes"] == 3 and info["arch"]["kwargs"]["num_classes"] == 3
    assert info["data"]["import_path"] == f"{PLUGIN}:blobs"


def test_an_explicit_number_of_classes_wins_unless_it_is_too_small(plugin_module):
    base = apply_overrides(preset_config("demo"), [*TINY, f"data={PLUGIN}:blobs", "model=mlp"])
    wider = build_session(apply_overrides(base, ["model.num_classes=7"]))
    assert wider.arch["kwargs"]["num_classes"] == 7
    with pytest.raises(ConfigError, match="model.num_classes=2 is fewer than the 3 classes"):
        build_session(apply_overrides(base, ["model.num_classes=2"]))


# ---- entry points of an installed distribution ---------------------------------------------------


def test_entry_points_are_listed_with_their_distribution(toy_dist, capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "toy_net  (entry point of toy-dist 0.1)" in out and "resnet32" in out
    assert main(["list", "datasets"]) == 0
    assert "toy_blobs  (entry point of toy-dist 0.1)" in capsys.readouterr().out
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "toy_independent" in out and "(entry point of toy-dist 0.1)" in out
    # A broken method is listed with its reason, not a traceback.
    (line,) = [li for li in out.splitlines() if li.startswith("misnamed")]
    assert "must be the entry point's name" in line


def test_entry_points_are_used_by_name(toy_dist):
    assert create("toy_net", num_classes=4, input_dim=6)(torch.randn(2, 6)).shape == (2, 4)
    ds = load_dataset("toy_blobs", n=9)
    assert ds.num_classes == 3 and ds.meta["distribution"] == "toy-dist 0.1"
    with pytest.raises(UnknownModelError) as caught:
        create("broken_net")
    text = _one_sentence(caught.value)
    assert "'broken_net'" in text and "toy-dist 0.1" in text and "failed to load" in text


def test_a_run_trains_with_a_plugin_model_dataset_and_method(toy_dist, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--set", *TINY, "model=toy_net", "data=toy_blobs", "method=toy_independent"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["method"]["name"] == "toy_independent"
    assert info["arch"] == {"name": "toy_net", "kwargs": {"num_classes": 3, "input_dim": 16}}
    assert info["data"]["num_classes"] == 3
    capsys.readouterr()
    bad = ["train", "--set", *TINY, "model=broken_net", "--out", str(tmp_path / "bad")]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "toy-dist 0.1" in err and "broken_net" in err


# ---- sweeps: module layout and study.json --------------------------------------------------------


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any level (``from okdph import x`` counts as okdph.x)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_launch_and_sweep_do_not_import_each_other():
    package = Path(__import__("okdph").__file__).parent
    assert "okdph.sweep" not in _imported_modules(package / "launch.py")
    assert "okdph.launch" not in _imported_modules(package / "sweep.py")
    for name in ("launch.py", "sweep.py"):
        assert "okdph.jobs" in _imported_modules(package / name)


def test_read_study_returns_what_the_sweep_wrote(tmp_path):
    study = Study(preset="demo", protocol="matched", methods=("independent",), seeds=(0, 1))
    open_study(tmp_path / "s", study)
    record = read_study(tmp_path / "s")
    assert record["version"] == 1 and [r["name"] for r in record["runs"]] == [
        "independent-s0",
        "independent-s1",
    ]
    assert read_study(tmp_path / "s" / "study.json") == record
    assert read_study(tmp_path / "nothing") is None
    # Entries a user adds (landscape compare's primary family) keep the study the same one.
    (tmp_path / "s" / "study.json").write_text(json.dumps({**record, "primary": {}}))
    assert open_study(tmp_path / "s", study)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{broken", "is not valid JSON"),
        ("[1, 2]", "holds a list, not a study object"),
        ('{"runs": []}', "has no format version"),
        ('{"version": 99}', "format version 99, newer than this okdph reads"),
        ('{"version": 1, "preset": "demo"}', "has no protocol entry"),
    ],
)
def test_a_malformed_study_json_is_one_sentence(tmp_path, content, fragment):
    (tmp_path / "study.json").write_text(content)
    with pytest.raises(StudyFileError) as caught:
        read_study(tmp_path)
    assert fragment in _one_sentence(caught.value) and isinstance(caught.value, ValueError)


def test_a_study_run_without_a_name_is_rejected(tmp_path):
    study = Study(preset="demo", protocol="matched", methods=("dml",), seeds=(0,))
    open_study(tmp_path, study)
    record = json.loads((tmp_path / "study.json").read_text())
    del record["runs"][0]["name"]
    (tmp_path / "study.json").write_text(json.dumps(record))
    with pytest.raises(StudyFileError, match=r"has no runs\[0\].name entry"):
        read_study(tmp_path)
