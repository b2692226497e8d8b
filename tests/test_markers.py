"""Every test module that starts real processes through tests/procs.py (directly, or through a helper that
imports it) carries `pytestmark = pytest.mark.slow`; the `gpu` marker is registered for GPU tests."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HELPER = "tests.procs"


def _module_name(path: Path) -> str:
    return ".".join(("tests", *path.relative_to(TESTS).with_suffix("").parts))


def _tests_imports(tree: ast.Module) -> set[str]:
    """The `tests.*` modules a module imports (any `from tests.x import y` names `tests.x`)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("tests."))
    return out


def _has_slow_mark(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                for t in node.targets):
            return "mark.slow" in ast.unparse(node.value)
    return False


def _spawning_modules(trees: dict[str, ast.Module]) -> set[str]:
    """Modules that import the process helper, directly or through other test modules."""
    spawning = {HELPER}
    grew = True
    while grew:
        grew = False
        for name, tree in trees.items():
            if name not in spawning and _tests_imports(tree) & spawning:
                spawning.add(name)
                grew = True
    return spawning


def test_process_spawning_modules_are_marked_slow() -> None:
    trees = {_module_name(p): ast.parse(p.read_text()) for p in TESTS.rglob("*.py")}
    spawning = _spawning_modules(trees)
    test_modules = {n for n in spawning if n.rsplit(".", 1)[-1].startswith("test_")}
    assert len(test_modules) >= 5, sorted(test_modules)  # the walk finds the users of the helper
    unmarked = sorted(n for n in test_modules if not _has_slow_mark(trees[n]))
    assert not unmarked, f"start processes but lack `pytestmark = pytest.mark.slow`: {unmarked}"


def test_markers_are_registered() -> None:
    text = (TESTS.parent / "pyproject.toml").read_text()  # no tomllib on Python 3.10
    block = re.search(r"^markers = \[(.*?)^\]", text, re.M | re.S)
    assert block, "pyproject.toml registers no pytest markers"
    names = set(re.findall(r'^\s*"(\w+):', block.group(1), re.M))
    assert {"slow", "gpu"} <= names, names
