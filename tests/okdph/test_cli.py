"""`okdph` from the command line: success paths and one-sentence errors with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from okdph.cli import main

FAST = ["epochs=1", "data.train_subset=128", "model.width=4"]


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--set", "method=magic"], "unknown method 'magic'"),
        (["train", "--set", "model=resnet33"], "unknown model 'resnet33'"),
        (["train", "--set", "epochz=3"], "unknown config key 'epochz' (did you mean epochs?)"),
        (["train", "--set", "optim.lrr=3"], "unknown config key 'optim.lrr'"),
        (["train", "--set", "epochs=many"], "epochs must be of type int"),
        (
            ["train", "--set", "data=cifar10", "data.root=/nonexistent/cifar"],
            "dataset root /nonexistent/cifar does not exist",
        ),
        (["train", "--set", "augment=shift+wobble"], "unknown augmentation 'wobble'"),
        (["train", "--set", "noequals"], "is not of the form key=value"),
        (["train", "--set", "epochs=-1"], "epochs must be at least 1, not -1"),
        (["train", "--set", "epochs=0"], "epochs must be at least 1, not 0"),
        (["train", "--set", "batch_size=0"], "batch_size must be at least 1"),
        (["train", "--set", "optim.lr=-1"], "optim.lr must be positive, not -1"),
        (["train", "--set", "optim.momentum=1.5"], "optim.momentum must be in [0, 1)"),
        (["train", "--set", "optim.milestones=(0.5,2)"], "optim.milestones are fractions"),
        (["train", "--set", "save_every=0"], "save_every must be at least 1"),
        (["train", "--set", "init=random"], "init must be auto, shared or independent"),
    ],
)
def test_user_errors_exit_2_with_one_sentence(argv, fragment, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = _error_line(capsys)
    assert err.startswith("okdph: error: ") and fragment in err
    assert not (tmp_path / "run").exists()  # nothing is created before the config is valid


def test_resume_of_something_that_is_not_a_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "does not exist" in _error_line(capsys)
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "is not a run directory (it has no run.json)" in _error_line(capsys)
    (tmp_path / "run.json").write_text("{broken")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "is not valid JSON" in _error_line(capsys)


def test_train_resume_and_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--set", *FAST, "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "hybrid" in stdout and f"run directory: {out}" in stdout
    assert main(["train", "--set", *FAST, "--out", str(out), "--no-progress"]) == 2
    assert "already holds a run; use --resume" in _error_line(capsys)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # already complete: no-op
    assert main(["train", "--set", *FAST, "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_print_config_presets_and_lists(capsys):
    assert (
        main(["train", "--preset", "mnist1d", "--set", "method.omega=0.5", "--print-config"]) == 0
    )
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["data"] == "mnist1d" and cfg["method_args"]["omega"] == 0.5
    assert cfg["method_args"]["beta"] == 0.8  # the method's defaults are shown too
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    for name in ("demo", "mnist1d", "cifar10-resnet32", "cifar100-resnet110"):
        assert name in listing
    assert main(["list", "methods"]) == 0
    assert set(capsys.readouterr().out.split()) >= {"okdph", "dml", "kdcl", "independent"}
    assert main(["list", "augmentations"]) == 0
    assert "cutout" in capsys.readouterr().out


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("okdph")
    out = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True, check=True)
    assert "--preset" in out.stdout and "examples:" in out.stdout
    bad = subprocess.run([str(exe), "train", "--preset", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_repeated_vary_and_set_flags_accumulate():
    from okdph.cli import build_parser

    args = build_parser().parse_args(
        ["sweep", "--methods", "dml", "--out", "x", "--vary", "optim.lr=1,2", "--vary",
         "batch_size=3,4", "--set", "epochs=2", "--set", "seed=1"]
    )  # fmt: skip
    assert args.vary == ["optim.lr=1,2", "batch_size=3,4"]  # two axes, not the last one
    assert args.overrides == ["epochs=2", "seed=1"]
