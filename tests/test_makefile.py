"""The Makefile's set-up: `make demo` after `make test` installs nothing more (the dev install
includes the core one), and a changed pyproject.toml installs again."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["make", "-C", str(folder), *args], capture_output=True, text=True, check=True
    )
    return done.stdout


@pytest.fixture
def project(tmp_path):
    """The Makefile beside a pyproject.toml, and a venv whose python does nothing."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    return tmp_path


def test_demo_after_test_installs_nothing(project):
    _make(project, ".venv/.installed")  # what `make test` installs first
    plan = _make(project, "-n", "demo")
    assert "pip install" not in plan and "okdph train --preset demo" in plan


def test_a_changed_pyproject_installs_again(project):
    _make(project, ".venv/.installed")
    later = time.time() + 5
    os.utime(project / "pyproject.toml", (later, later))
    assert "pip install -e ." in _make(project, "-n", "demo")
