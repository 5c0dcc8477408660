"""A tiny trained OKDPH run (2 epochs, 4-channel CNNs on 128 digits), shared by the analysis tests."""

import shutil

import pytest

from okdph.config import apply_overrides
from okdph.presets import preset_config
from okdph.trainer import train

TINY = ["epochs=2", "data.train_subset=128", "model.width=4", "batch_size=64"]


@pytest.fixture(scope="session")
def tiny_run_master(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "tiny"
    train(apply_overrides(preset_config("demo"), TINY), path, progress=False)
    return path


@pytest.fixture
def tiny_run(tiny_run_master, tmp_path):
    """A private copy, so a test can write its analysis next to it."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run_master, dst)
    return dst
