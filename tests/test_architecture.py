"""The layout's rules (docs/ARCHITECTURE.md), read from the source: which package may import
which, how long a library function may be."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "indexer", "service")
MAX_FUNCTION_LINES = 60


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _all_imports() -> dict[str, set[str]]:
    return {str(p.relative_to(REPO)): _imports(p) for pkg in PACKAGES for p in _modules(pkg)}


def _hits(imports: dict[str, set[str]], prefix: str, where: str) -> list[str]:
    return sorted(f"{path}: {name}" for path, names in imports.items() if path.startswith(where)
                  for name in names if name == prefix or name.startswith(prefix + "."))


@pytest.mark.parametrize("lower, higher", [
    ("model/", "indexer"), ("model/", "service"), ("indexer/", "service"),
])
def test_no_import_runs_back_up(lower, higher):
    """model -> indexer -> service: a stage never imports a later one."""
    assert _hits(_all_imports(), higher, lower) == []


def test_inference_library_does_not_import_the_research_tools():
    """model/ (the library the indexer and service load) never imports model.training;
    only the `python -m model.<command>` entry points at model/'s top point into it."""
    imports = _all_imports()
    entry_points = {f"model/{name}.py" for name in ("train", "evaluate", "synth",
                                                     "fashionai_convert", "dataset",
                                                     "deepfashion_convert")}
    library = {p: n for p, n in imports.items()
               if p.startswith("model/") and not p.startswith("model/training/")
               and p not in entry_points}
    assert _hits(library, "model.training", "model/") == []
    for path in entry_points & imports.keys():
        assert len((REPO / path).read_text().splitlines()) <= 10, f"{path} is an entry point only"


def test_indexer_and_service_do_not_import_the_research_tools():
    imports = _all_imports()
    assert _hits(imports, "model.training", "indexer/") == []
    assert _hits(imports, "model.training", "service/") == []


def test_only_the_app_imports_routers_and_nothing_imports_tests():
    imports = _all_imports()
    routers = [h for h in _hits(imports, "service.routers", "")
               if not h.startswith(("service/app.py:", "service/routers/__init__.py:"))]
    # a router may import the package's shared V1 prefix, never another router
    routers = [h for h in routers if not h.endswith((": service.routers", ": service.routers.V1"))]
    assert routers == []
    for name in ("testkit", "tests", "conftest"):
        assert _hits(imports, name, "") == []


def test_library_functions_are_short():
    """No function of model/, indexer/ or service/ over 60 lines (docstring included)."""
    long = []
    for pkg in PACKAGES:
        for path in _modules(pkg):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} {lines}")
    assert long == []


def test_one_version_string():
    """The version is written once (model/version.py); pyproject and packages read it."""
    from model.version import __version__

    hits = []
    for path in [*(p for pkg in PACKAGES for p in _modules(pkg)), REPO / "pyproject.toml"]:
        if path.name != "version.py" and f'"{__version__}"' in path.read_text(encoding="utf-8"):
            hits.append(str(path.relative_to(REPO)))
    assert hits == []
