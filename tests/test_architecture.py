"""Architecture rules, read from the source with `ast` (nothing is imported):

- no import cycle among the modules of chameleon/, router/ and shard/, counting every import
  statement wherever it stands (inside functions and under `if TYPE_CHECKING:` too);
- no module uses another module's private (single-underscore) names: neither `from m import _x` (nor
  `import m._x` from outside `m`'s package), nor `obj._x` where `obj` is not `self`/`cls`/`super()`
  and `_x` is not defined in the module that reads it (a class of the module may read the private
  attributes of its own kind of objects, e.g. `other._items` in `__eq__`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chameleon", "router", "shard")

# Underscore names that are public by their library's documentation.
PUBLIC_UNDERSCORE = frozenset({
    "_asdict", "_replace", "_fields", "_make", "_field_defaults",  # collections.namedtuple
    "_exit",  # os._exit: leave a forked child at once
})

# Files outside router/ with violations (private names used, or a module of an import cycle) that other
# parts of issue 16 are fixing in parallel; the lead empties this after merging them. Never add to it.
EXEMPT: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def package(self) -> str:
        """The package the module's relative imports start from."""
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]

    @property
    def where(self) -> str:
        return str(self.path.relative_to(ROOT))


def _modules() -> dict[str, Module]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            out[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return out


MODULES = _modules()


def _absolute(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.package.split(".")
    base = base[:len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(mod: Module) -> Iterator[tuple[ast.stmt, str, list[str]]]:
    """(statement, imported module, names imported from it) for every import in the module."""
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            yield node, _absolute(mod, node), [a.name for a in node.names]


def _edges(mod: Module) -> set[str]:
    """The project modules `mod` imports (`from pkg import sub` is an edge to the module pkg.sub)."""
    out = set()
    for _, target, names in _imports(mod):
        for name in names or [""]:
            sub = f"{target}.{name}" if name else target
            if sub in MODULES:
                out.add(sub)
            elif target in MODULES:
                out.add(target)
    out.discard(mod.name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) \
        and name not in PUBLIC_UNDERSCORE


def _defined(tree: ast.Module) -> set[str]:
    """Every private name the module defines: functions, classes, assigned names and attributes,
    parameters, `__slots__` entries."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _private(node.value):
            out.add(node.value)  # __slots__ entries, getattr names
    return {n for n in out if _private(n)}


def _is_own(obj: ast.expr) -> bool:
    if isinstance(obj, ast.Name):
        return obj.id in ("self", "cls")
    return isinstance(obj, ast.Call) and isinstance(obj.func, ast.Name) and obj.func.id in ("super", "type")


def _private_uses(mod: Module) -> Iterator[str]:
    for node, target, names in _imports(mod):
        if isinstance(node, ast.Import):
            parts = target.split(".")
            for i, part in enumerate(parts):
                owner = ".".join(parts[:i])
                if _private(part) and not (mod.name == owner or mod.name.startswith(owner + ".")):
                    yield f"{mod.where}:{node.lineno}: imports private module {target}"
                    break
        else:
            yield from (f"{mod.where}:{node.lineno}: imports {target}.{n}" for n in names if _private(n))
    own = _defined(mod.tree)
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own \
                and not _is_own(node.value):
            yield f"{mod.where}:{node.lineno}: uses {ast.unparse(node)}"


def all_cycles() -> list[list[str]]:
    return _cycles({name: _edges(mod) & MODULES.keys() for name, mod in MODULES.items()})


def all_private_uses() -> list[str]:
    return [v for mod in MODULES.values() for v in _private_uses(mod)]


def _exempt(module: str) -> bool:
    return MODULES[module].where in EXEMPT


def test_no_import_cycle_inside_a_package():
    cycles = [c for c in all_cycles() if not all(_exempt(m) for m in c)]
    assert not cycles, "import cycles (TYPE_CHECKING imports count):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_no_module_uses_another_modules_private_names():
    found = [v for v in all_private_uses() if v.split(":", 1)[0] not in EXEMPT]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_exemptions_are_current():
    """An exempt file without a violation is stale: remove it. router/ is never exempt."""
    bad = {v.split(":", 1)[0] for v in all_private_uses()}
    bad |= {MODULES[m].where for c in all_cycles() for m in c}
    assert not EXEMPT - bad
    assert not any(path.startswith("router/") for path in EXEMPT)


def test_checks_catch_what_they_are_for(tmp_path: Path):
    """The checkers themselves: a cycle through TYPE_CHECKING and each kind of private use is found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import X\n"
           "from p.b import _hidden\n"
           "class K:\n    _slot = 1\n    def f(self, other):\n"
           "        return self._own, other._slot, other._foreign, super()._base, other.__dict__\n")
    mod = Module("p.a", tmp_path / "a.py", ast.parse(src))
    assert "p.b" in {t for _, t, _ in _imports(mod)}
    found = [v.split(": ", 1)[1] for v in _private_uses(Module(mod.name, ROOT / "a.py", mod.tree))]
    assert found == ["imports p.b._hidden", "uses other._foreign"]


# --- what each folder may import (design.md "Who owns what") ------------------------------------------
PURE_FOLDERS = ("chameleon/core", "chameleon/sim", "chameleon/workload")
PURE_FORBIDDEN = frozenset({"torch", "grpc", "asyncio", "subprocess", "aiohttp", "chameleon_pb", "router",
                            "shard", "chameleon.tools"})
FOLDER_RULES: dict[str, frozenset[str]] = {
    **{folder: PURE_FORBIDDEN for folder in PURE_FOLDERS},
    "chameleon/tools": frozenset({"torch", "router", "shard"}),  # reaches router/shard by name only
    "chameleon/scale": frozenset({"torch", "router", "shard"}),  # replicas are processes it talks HTTP to
    "router": frozenset({"torch", "shard"}),
    "shard": frozenset({"router"}),
}


def _imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in `tree`, function-level and TYPE_CHECKING imports included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:  # `from chameleon import tools`
                yield node.lineno, f"{node.module}.{alias.name}"


def _forbidden(module: str, banned: frozenset[str]) -> bool:
    return any(module == b or module.startswith(b + ".") for b in banned)


def test_each_folder_imports_only_what_it_may():
    """The policy core, the simulator and the workload are pure Python (no torch, grpc, asyncio,
    subprocess, generated stubs, router, shard or tools); the tools and the scale-out package never import
    torch, router or shard (the CLI reaches them by module name at call time, replicas over HTTP); router
    never imports torch or shard; shard never imports router."""
    found = []
    for folder, banned in FOLDER_RULES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            found += [f"{path.relative_to(ROOT)}:{line}: imports {mod}"
                      for line, mod in _imported(tree) if _forbidden(mod, banned)]
    assert not found, "\n".join(found)
