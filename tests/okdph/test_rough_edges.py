"""What a new user of `okdph` runs into: every mistake is one sentence and exit code 2, and the
listings and messages say what they mean."""

import io
import json
import shlex

import pytest

from okdph.cli import main
from okdph.config import TrainConfig
from okdph.methods import list_methods, method_options

FAST = ["epochs=1", "data.train_subset=64", "model.width=4", "batch_size=32"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("okdph: error: "), err
    return err


# ---- --out that is a file ----------------------------------------------------------------------


@pytest.mark.parametrize("below", [False, True])
def test_an_out_path_that_is_a_file_is_one_sentence(below, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    out = blocker / "run" if below else blocker
    assert main(["train", "--dry-run", "--no-progress", "--set", *FAST, "--out", str(out)]) == 2
    assert f"{blocker} is a file, not a directory" in _error_line(capsys)
    assert blocker.read_text() == "mine"


def test_a_sweep_out_path_that_is_a_file_is_one_sentence(tmp_path, capsys):
    blocker = tmp_path / "study"
    blocker.write_text("")
    argv = ["sweep", "--methods", "dml", "--seeds", "0", "--set", *FAST, "--out", str(blocker)]
    assert main(argv) == 2
    assert f"{blocker} is a file, not a directory" in _error_line(capsys)


# ---- nan and inf ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=nan",
        "optim.lr=inf",
        "optim.lr=-inf",
        "optim.lr=1e999",
        "optim.milestones=0.5,nan",
        "stop_at_loss=nan",
        "stop_at_loss=inf",
        "eval_test_from=nan",
        "track.mix=inf",
        "method.omega=nan",
    ],
)
def test_nan_and_inf_are_refused_as_not_finite(override, capsys):
    assert main(["train", "--print-config", "--set", override]) == 2
    err = _error_line(capsys)
    key = override.partition("=")[0]
    assert f"{key} must be a finite number" in err and "of type float" not in err


def test_stop_at_loss_may_still_be_switched_off(capsys):
    assert main(["train", "--print-config", "--set", "stop_at_loss=2", "stop_at_loss=none"]) == 0
    assert json.loads(capsys.readouterr().out)["stop_at_loss"] is None


# ---- OKDPH with one student ----------------------------------------------------------------------


def test_okdph_with_one_student_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dry-run", "--no-progress", "--out", str(out)]
    assert main([*argv, "--set", *FAST, "method=okdph", "num_students=1"]) == 2
    assert "okdph needs num_students >= 2" in _error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("method", list_methods(plugins=False))
def test_every_method_with_one_network_trains_or_says_why(method, tmp_path, capsys):
    """One network per run (the validation grid's setting): a method either trains it (DML's
    distillation term is then zero, logged as a number) or refuses in one sentence."""
    out = tmp_path / "run"
    argv = ["train", "--dry-run", "--no-progress", "--out", str(out)]
    code = main([*argv, "--set", *FAST, f"method={method}", "num_students=1"])
    if code == 0:
        capsys.readouterr()
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert all(isinstance(v, (int, float)) for v in last.values())
    else:
        assert code == 2 and "num_students" in _error_line(capsys) and not out.exists()


# ---- a reader that goes away ---------------------------------------------------------------------


class _ClosedPipe(io.StringIO):
    """A stdout whose reader has gone, as after `okdph presets | head -1`."""

    def __init__(self, fail_on: str) -> None:
        super().__init__()
        self.fail_on = fail_on

    def write(self, text: str) -> int:
        if self.fail_on == "write":
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)

    def flush(self) -> None:
        if self.fail_on == "flush":  # what was buffered reaches the pipe only now
            raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("fail_on", ["write", "flush"])
@pytest.mark.parametrize("argv", [["presets"], ["list", "methods"]])
def test_a_closed_stdout_ends_quietly(argv, fail_on, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdout", _ClosedPipe(fail_on))
    assert main(argv) == 141  # as a shell reports a program ended by SIGPIPE
    assert capsys.readouterr().err == ""


# ---- unknown preset ------------------------------------------------------------------------------


def test_an_unknown_preset_suggests_the_closest_one(capsys):
    assert main(["train", "--preset", "cifar10-resnet23", "--print-config"]) == 2
    err = _error_line(capsys)
    assert "unknown preset 'cifar10-resnet23' (did you mean cifar10-resnet32?)" in err
    assert "see `okdph presets`" in err and len(err) < 120
    assert main(["train", "--preset", "nosuch", "--print-config"]) == 2
    err = _error_line(capsys)
    assert "did you mean" not in err and "see `okdph presets`" in err and len(err) < 120


# ---- every bad value of every field --------------------------------------------------------------

BAD_VALUES = [
    # top-level fields: wrong type, out of range, nan, unknown key
    (["epochs=abc"], "epochs must be of type int"),
    (["epochs=0"], "epochs must be at least 1"),  # --dry-run's single epoch must not hide it
    (["epochs=nan"], "epochs must be of type int"),
    (["epochs=1.5"], "epochs must be of type int"),
    (["num_students=0"], "num_students must be at least 1"),
    (["num_students=two"], "num_students must be of type int"),
    (["seed=-1"], "seed must be non-negative"),
    (["batch_size=0"], "batch_size must be at least 1"),
    (["batch_size=2.5"], "batch_size must be of type int"),
    (["eval_batch_size=0"], "eval_batch_size must be at least 1"),
    (["init=random"], "init must be auto, shared or independent"),
    (["augment=shift+wobble"], "unknown augmentation 'wobble'"),
    (["eval_test_from=1.5"], "eval_test_from must be a fraction"),
    (["eval_test_from=soon"], "eval_test_from must be of type float"),
    (["stop_at_loss=-1"], "stop_at_loss must be positive"),
    (["save_every=0"], "save_every must be at least 1"),
    (["keep_every=0"], "keep_every must be at least 1"),
    (["device=quantum"], "unknown device 'quantum'"),
    (["amp=maybe"], "amp must be of type bool"),
    (["channels_last=2"], "channels_last must be of type bool"),
    (["method=magic"], "unknown method 'magic'"),
    (["model=resnet33"], "unknown model 'resnet33'"),
    (["data=nosuch"], "unknown dataset 'nosuch'"),
    (["epochz=3"], "unknown config key 'epochz'"),
    (["optim=3"], "optim must be of type OptimConfig"),
    (["nope.lr=1"], "unknown config key 'nope.lr'"),
    # optim.*
    (["optim.lr=0"], "optim.lr must be positive"),
    (["optim.lr=fast"], "optim.lr must be of type float"),
    (["optim.lr=nan"], "optim.lr must be a finite number"),
    (["optim.momentum=1.5"], "optim.momentum must be in [0, 1)"),
    (["optim.weight_decay=-1"], "optim.weight_decay must be >= 0"),
    (["optim.nesterov=maybe"], "optim.nesterov must be of type bool"),
    (["optim.momentum=0", "optim.nesterov=true"], "optim.nesterov needs a positive momentum"),
    (["optim.milestones=0.5,2"], "optim.milestones are fractions"),
    (["optim.milestones=half"], "optim.milestones must be of type float"),
    (["optim.lr_decay=0"], "optim.lr_decay must be in (0, 1]"),
    (["optim.lrr=3"], "unknown config key 'optim.lrr'"),
    (["optim.lr.x=1"], "unknown config key 'optim.lr.x'"),
    # track.* and log.*
    (["track.every=-1"], "track.every must be non-negative"),
    (["track.every=often"], "track.every must be of type int"),
    (["track.every=2", "track.points=3"], "set one of track.every, track.points"),
    (["track.samples=0"], "track.samples must be at least 1"),
    (["track.bn=batch"], "track.bn must be train or eval"),
    (["track.tol=0"], "track.tol must be in (0, 1)"),
    (["track.tol=nan"], "track.tol must be a finite number"),
    (["track.max_iter=1"], "track.max_iter must be at least 2"),
    (["track.mix=-1"], "track.mix must be non-negative"),
    (["track.trace_rtol=1"], "track.trace_rtol must be in (0, 1)"),
    (["track.trace=maybe"], "track.trace must be of type bool"),
    (["track.nope=1"], "unknown config key 'track.nope'"),
    (["log.tensorboard=maybe"], "log.tensorboard must be of type bool"),
    (["log.nope=1"], "unknown config key 'log.nope'"),
    # data.* (the dataset's own arguments)
    (["data.train_subset=-5"], "data.train_subset must be at least 1"),
    (["data.train_subset=some"], "data.train_subset must be of type int"),
    (["data.train_subset=nan"], "data.train_subset must be of type int"),
    (["data.test_fraction=nan"], "data.test_fraction must be a finite number"),
    (["data.nope=1"], "unexpected keyword argument 'nope'"),
    # model.* (the model's own arguments)
    (["model.width=0"], "'width': 0"),
    (["model.width=-3"], "'width': -3"),
    (["model.width=wide"], "model.width must be of type int"),
    (["model.width=nan"], "model.width must be of type int"),
    (["model.nope=1"], "unexpected keyword argument 'nope'"),
    # method.* of OKDPH (the demo's method)
    (["method.omega=2"], "method.omega must lie in [0, 1]"),
    (["method.omega=nan"], "method.omega must be a finite number"),
    (["method.beta=-1"], "method.beta must not be negative"),
    (["method.temperature=0"], "method.temperature must be positive"),
    (["method.alpha=0"], "method.alpha must be positive"),
    (["method.fusion_gamma=1.5"], "method.fusion_gamma must lie in [0, 1]"),
    (["method.fusion_every=3_weeks"], "fusion_every must look like"),
    (["method.mode=fancy"], "method.mode must be one of paper, code"),
    (["method.hwm_grad=x"], "method.hwm_grad must be one of through, detached"),
    (["method.hwm_in_teacher=maybe"], "method.hwm_in_teacher must be of type bool"),
    (["method.omgea=0.5"], "unknown config key 'method.omgea' (did you mean method.omega?)"),
    # method.* of KDCL, DML and others
    (["method=kdcl", "method.teacher=best"], "method.teacher must be one of mean, naive"),
    (["method=kdcl", "method.alpha=1.5"], "method.alpha must lie in [0, 1]"),
    (["method=kdcl", "method.temperature=0"], "method.temperature must be positive"),
    (["method=kdcl", "method.temperature=hot"], "method.temperature must be of type float"),
    (["method=kdcl", "method.nope=1"], "unknown config key 'method.nope'"),
    (["method=dml", "method.temperature=0"], "method.temperature must be positive"),
    (["method=dml", "method.kd_weight=-1"], "method.kd_weight must not be negative"),
    (["method=dml", "method.temperature=inf"], "method.temperature must be a finite number"),
    (["method=ema", "method.consistency_type=l1"], "method.consistency_type must be one of"),
    (["method=wml", "num_students=3", "method.hypergrad=x"], "method.hypergrad must be one of"),
    (["method=wml", "num_students=3", "method.head_widths=x,y"], "method.head_widths must be"),
    (["method=okddip", "num_students=1"], "okddip needs num_students >= 2"),
    (["method=okdph", "num_students=1"], "okdph needs num_students >= 2"),
]


@pytest.mark.parametrize("overrides, names", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_every_bad_value_is_one_sentence_and_exit_2(overrides, names, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dry-run", "--no-progress", "--out", str(out), "--set", *FAST, *overrides]
    assert main(argv) == 2
    assert names in _error_line(capsys)
    assert not out.exists()  # refused before anything is written


# ---- --print-config ------------------------------------------------------------------------------


def test_print_config_shows_the_method_options_as_the_run_uses_them(capsys):
    argv = ["train", "--set", "method=kdcl", "method.alpha=0.3", "--print-config"]
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["method_args"] == {"alpha": 0.3, "temperature": 4.0, "teacher": "mean"}
    # Still valid input: read back, it gives the same config and the same method options.
    cfg = TrainConfig.from_dict(shown)
    assert cfg.to_dict() == shown
    assert method_options(cfg.method, cfg.method_args) == shown["method_args"]

    assert main(["train", "--print-config"]) == 0  # OKDPH: the mode's choices are filled in
    options = json.loads(capsys.readouterr().out)["method_args"]
    assert options["mode"] == "paper" and options["hwm_sampling"] == "dirichlet"
    assert options["omega"] == 0.8


# ---- okdph list methods --------------------------------------------------------------------------


def test_list_methods_shows_whole_descriptions_and_the_values_of_switches(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    text = " ".join(out.split())
    # EMA's first docstring line ends at "as the": the rest of its sentence must follow.
    assert "as the OKDPH repository's ``src/11_EMA.py`` runs it" in text
    assert "method.teacher='mean' one of mean, naive, minlogit, linear" in text
    assert "method.mode='paper' one of paper, code" in text


# ---- Ctrl-C --------------------------------------------------------------------------------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_an_interrupted_run_names_its_directory(tmp_path, monkeypatch, capsys):
    out = tmp_path / "my runs" / "demo"  # a space: the command must still paste as it is
    monkeypatch.setattr("okdph.trainer.Trainer.train_epoch", _interrupt)
    argv = ["train", "--dry-run", "--no-progress", "--set", *FAST, "--out", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert (
        err == f"okdph: interrupted; continue with `okdph train --resume {shlex.quote(str(out))}`"
    )
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert main(["train", "--resume", str(out), "--no-progress", "--dry-run"]) == 130
    assert f"--resume {shlex.quote(str(out))}`" in capsys.readouterr().err


def test_an_interrupt_before_the_run_exists_says_so(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr("okdph.trainer.build_session", _interrupt)
    argv = ["train", "--dry-run", "--no-progress", "--set", *FAST, "--out", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"okdph: interrupted before anything was written to {out}"
    assert "RUN_DIR" not in err
