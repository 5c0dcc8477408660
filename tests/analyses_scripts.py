"""Import the scripts of ``analyses/`` in tests (the folder is not a package)."""

import importlib.util
from pathlib import Path
from types import ModuleType


def load_analysis_script(name: str) -> ModuleType:
    """``analyses/<name>.py`` imported by file name."""
    path = Path(__file__).resolve().parents[1] / "analyses" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
