"""Property-based checks of the command lines: whatever the `--set` tokens or however a run
directory is damaged, the answer is an exit code of 0 or 2 with one sentence, never a traceback."""

import contextlib
import io
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from landscape.cli import main as landscape
from okdph.cli import main as okdph
from okdph.config import apply_overrides
from okdph.presets import preset_config
from okdph.trainer import train

KEYS = [
    "epochs",
    "batch_size",
    "seed",
    "init",
    "augment",
    "method",
    "model",
    "data",
    "optim.lr",
    "optim.momentum",
    "optim.milestones",
    "method.omega",
    "model.width",
    "data.train_subset",
    "keep_every",
    "nonsense",
    "optim.nope",
    "method.fusion_every",
]
VALUES = st.one_of(
    st.integers(-5, 300).map(str),
    st.floats(-2, 2).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e309"]),
    st.sampled_from(
        [
            "true",
            "false",
            "(0.5,2)",
            "[1,2]",
            "shared",
            "dml",
            "okdph",
            "x,y",
            "",
            "1_epoch",
            "shift+noise",
            "{'a': 1}",
            "None",
        ]
    ),
    st.text(max_size=8),
)
TOKENS = st.lists(
    st.one_of(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), VALUES), st.text(max_size=10)
    ),
    min_size=1,
    max_size=4,
)


def _run(main, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own usage errors
            code = exit_.code
    return code, err.getvalue()


@settings(max_examples=150, deadline=None)
@given(TOKENS)
def test_any_set_tokens_give_a_config_or_one_sentence(tokens):
    tokens = [t for t in tokens if not t.startswith("-")]  # not options of the parser
    if not tokens:
        return
    code, err = _run(okdph, ["train", "--print-config", "--set", *tokens])
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2 and err.startswith("okdph: error:"):
        assert len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("prop") / "run"
    cfg = apply_overrides(
        preset_config("demo"),
        ["epochs=1", "data.train_subset=64", "model.width=4", "batch_size=32"],
    )
    train(cfg, path, progress=False)
    return path


FILES = [
    "run.json",
    "checkpoints/epoch_0001.pt",
    "checkpoints/epoch_0001.json",
    "checkpoints/epoch_0000.pt",
    "metrics.jsonl",
]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(FILES),
    st.sampled_from(["truncate", "garbage", "delete", "empty"]),
    st.floats(0.0, 1.0),
    st.binary(min_size=1, max_size=64),
)
def test_a_damaged_run_directory_is_one_sentence(tiny, tmp_path_factory, name, how, cut, junk):
    run = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(tiny, run)
    target = run / name
    data = target.read_bytes()
    if how == "truncate":
        target.write_bytes(data[: int(len(data) * cut)])
    elif how == "garbage":
        target.write_bytes(junk)
    elif how == "empty":
        target.write_bytes(b"")
    else:
        target.unlink()
    code, err = _run(
        landscape,
        [
            "analyze",
            str(run),
            "--analyses",
            "fit",
            "--formats",
            "json",
            "--samples",
            "32",
            "--no-progress",
        ],
    )
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("landscape: error:")
