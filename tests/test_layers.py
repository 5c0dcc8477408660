"""The packages' layers import only downwards (architecture: engines < pipeline < report/cli).

Every ``import`` and ``from ... import`` in a module's source is read with ``ast`` (function-level
imports included), so a lazy import cannot slip past the contract.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: For each layer of ``landscape``, the layers it may import from (itself always allowed).
LANDSCAPE_ALLOWED = {
    "core": set(),
    "curvature": {"core"},
    "geometry": {"core"},
    "measures": {"core", "curvature", "geometry", "report"},
    "pipeline": {"core", "curvature", "geometry", "measures", "report"},
    "report": {"core"},
    "study": {"core", "measures", "pipeline", "report"},
    "cli": {"core", "curvature", "geometry", "measures", "pipeline", "report", "study"},
    "__main__": {"cli"},
    "__init__": {"core", "curvature", "geometry", "measures", "pipeline", "report"},
}
#: The one module of ``landscape`` that imports ``okdph``, and what it may use of it: the
#: run-directory and study formats, the model registry, the datasets.
OKDPH_ADAPTER = "landscape.pipeline.okdph_adapter"
OKDPH_PUBLIC = {"okdph.run", "okdph.models", "okdph.data", "okdph.sweep", "okdph.config"}


def _imports(source: str, module: str) -> list[str]:
    """Absolute module names imported anywhere in ``source``, the text of ``module`` (dotted name;
    relative imports resolved against its package)."""
    tree = ast.parse(source, filename=module)
    package = ".".join(module.split(".")[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.append(mod)
            # ``from landscape import pipeline`` imports the sub-package landscape.pipeline
            names += [f"{mod}.{a.name}" for a in node.names if mod in ("landscape", "okdph")]
    return names


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "landscape":
        return None
    if len(parts) == 1:
        return "__init__"
    return parts[1] if parts[1] in LANDSCAPE_ALLOWED else None


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _check_layer(own: str, names: list[str], where: str, module: str = "") -> None:
    """Fail if a module of layer ``own`` imports ``names`` against the contract."""
    allowed = LANDSCAPE_ALLOWED[own] | {own}
    for name in names:
        top = name.split(".")[0]
        if top == "landscape" and name != "landscape":
            layer = _layer(name)
            assert layer in allowed, f"{where} ({own}) imports {name} ({layer})"
        if top == "okdph":
            assert module == OKDPH_ADAPTER, f"{where} imports {name}: only {OKDPH_ADAPTER} may"
            assert any(name == p or name.startswith(p + ".") for p in OKDPH_PUBLIC), (
                f"{where} imports okdph internals: {name}"
            )


@pytest.mark.parametrize(
    "path", _modules("landscape"), ids=lambda p: str(p.relative_to(ROOT / "landscape"))
)
def test_landscape_layers_import_downwards(path: Path) -> None:
    module = _module_name(path)
    own = _layer(module)
    assert own is not None, f"{module} is in no layer; add its room to LANDSCAPE_ALLOWED"
    _check_layer(own, _imports(path.read_text(), module), path.name, module)


@pytest.mark.parametrize("path", _modules("okdph"), ids=lambda p: str(p.relative_to(ROOT)))
def test_okdph_never_imports_landscape(path: Path) -> None:
    for name in _imports(path.read_text(), _module_name(path)):
        assert name.split(".")[0] != "landscape", f"{path} imports {name}"


def test_the_walk_sees_lazy_and_relative_imports() -> None:
    # The contract is only as good as the walk: function-level and relative imports must be found.
    lazy = "def f():\n    from landscape.pipeline import runs\n    return runs\n"
    names = _imports(lazy, "landscape.report.probe")
    assert "landscape.pipeline" in names
    with pytest.raises(AssertionError, match="imports landscape.pipeline"):
        _check_layer("report", names, "probe")
    relative = _imports("from ..pipeline import runs\n", "landscape.report.probe")
    assert relative == ["landscape.pipeline"]
    with pytest.raises(AssertionError, match="only landscape.pipeline.okdph_adapter may"):
        _check_layer("geometry", _imports("import okdph.run\n", "landscape.geometry.x"), "x")
    with pytest.raises(AssertionError, match="okdph internals"):
        names = _imports("import okdph.trainer\n", OKDPH_ADAPTER)
        _check_layer("pipeline", names, "okdph_adapter.py", OKDPH_ADAPTER)


def test_okdph_modules_import_no_cycle() -> None:
    """No okdph module imports (at any level, lazily included) one that imports it back."""
    modules = {_module_name(p): p for p in _modules("okdph")}

    def resolve(name: str) -> str | None:
        while name and name not in modules and f"{name}.__init__" not in modules:
            name = name.rpartition(".")[0]
        return name if name in modules else (f"{name}.__init__" if name else None)

    graph = {
        m: {r for n in _imports(p.read_text(), m) if (r := resolve(n)) and r != m}
        for m, p in modules.items()
    }
    # A package's __init__ re-exporting its modules is not a cycle of behaviour: skip its edges.
    graph = {m: {r for r in rs if not r.endswith("__init__")} for m, rs in graph.items()}
    for start in graph:
        seen, stack = set(), list(graph[start])
        while stack:
            m = stack.pop()
            assert m != start, f"{start} imports a module that imports it back"
            if m not in seen:
                seen.add(m)
                stack += graph.get(m, ())
