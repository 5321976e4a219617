"""The package import graph of ``src/aemia``: no cycle between packages, and the declared layer order holds.

Every import counts: module level, inside functions, under ``TYPE_CHECKING``, relative, and a module named by a
string constant (a lazy ``importlib.import_module`` registry such as ``nets/registry``'s ``_LAZY``). A module
may import modules of its own layer and of lower layers, never of a higher one (DEVELOPERS.md).

Known violations are listed one import at a time in :data:`ALLOWED_FOR_NOW`, so this test passes today and fails
on any new one; an entry that no longer occurs also fails, so the list only shrinks. ``docs/import_graph.py``
draws the same graph.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "aemia"

#: Bottom to top; one tuple per layer (the order README's architecture section and ``aemia/runs/__init__``
#: document): the one training loop sits below every method that trains through it; ``runs`` (RunConfig and
#: the run-folder type) sits above it and below ``infer``, which reads a run through it; the methods sit above
#: ``infer``; ``recipes`` (dataset → run, report, pruning, the liver-tumour recipe) above the methods.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "utils"),
    ("data",),
    ("evaluate",),
    ("nets",),
    ("train",),
    ("runs",),
    ("infer",),
    ("pretrain", "active", "synth", "semisup", "weak", "universal"),
    ("recipes",),
    ("serve",),  # the review app (aemia serve): over the active ledger, under the CLI
    ("cli",),
    ("aemia",),  # the package's own __init__
]

#: Modules placed in another layer than their package's (exact module names).
PLACED: dict[str, str] = {}

#: (importing module, imported module): known violations. Shrink this list; never grow it.
ALLOWED_FOR_NOW: list[tuple[str, str]] = []

_MODULE_NAME = re.compile(r"aemia(\.[A-Za-z_][A-Za-z0-9_]*)+")


def module_names(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """Modules of the package that ``module`` imports anywhere in its source."""
    known = set(known)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:  # `import aemia.x.y.z` where z is an attribute: its module
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from aemia.train import run` imports the submodule
                sub = f"{target}.{alias.name}"
                add(sub if sub in known else target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if _MODULE_NAME.fullmatch(node.value) and node.value in known:
                add(node.value)
    found.discard(module)
    return {m for m in found if m.startswith("aemia")}


def component(module: str) -> str:
    """The layer node of a module: its placement, else its subpackage (``aemia.x.y`` → ``x``)."""
    if module in PLACED:
        return PLACED[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "aemia"


def layer_of(comp: str) -> int:
    for i, names in enumerate(LAYERS):
        if comp in names:
            return i
    raise KeyError(comp)


def import_edges(src: Path = SRC) -> set[tuple[str, str]]:
    """(importer, imported) over modules of different layer nodes."""
    modules = module_names(src)
    return {(m, t) for m, path in modules.items() for t in imports_of(m, path, modules) if component(m) != component(t)}


def component_graph(edges: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(component(a), set()).add(component(b))
        graph.setdefault(component(b), set())
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# ------------------------------------------------------------------------------------------------------- tests


def test_every_package_has_a_layer() -> None:
    comps = {component(m) for m in module_names()}
    assert comps <= {c for layer in LAYERS for c in layer}, "place the new package in LAYERS"
    assert set(PLACED) <= set(module_names()), "PLACED names a module that does not exist"


def test_no_import_cycle_between_packages() -> None:
    allowed = set(ALLOWED_FOR_NOW)
    found = cycles(component_graph(e for e in import_edges() if e not in allowed))
    assert not found, f"import cycles between packages: {found}"


def test_no_layer_imports_a_higher_one() -> None:
    allowed = set(ALLOWED_FOR_NOW)
    upward = sorted((a, b) for a, b in import_edges() if layer_of(component(b)) > layer_of(component(a)))
    new = [f"{a} -> {b}" for a, b in upward if (a, b) not in allowed]
    assert not new, "imports of a higher layer (see LAYERS):\n" + "\n".join(new)


def test_allowed_violations_still_exist() -> None:
    """Remove an ALLOWED_FOR_NOW entry once it is fixed, so it cannot come back unnoticed."""
    edges = import_edges()
    stale = [e for e in ALLOWED_FOR_NOW if e not in edges]
    assert not stale, f"fixed, remove from ALLOWED_FOR_NOW: {stale}"


def test_the_scanner_sees_imports_inside_functions_relative_and_by_name(tmp_path: Path) -> None:
    pkg = tmp_path / "aemia"
    for sub in ("low", "high"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "high" / "mod.py").write_text('"""aemia.low.a is named in a docstring only."""\n')
    (pkg / "low" / "a.py").write_text(
        "def f():\n    from aemia.high import mod\n\n"
        "from . import b\n"
        "LAZY = {'x': 'aemia.high'}\n")
    (pkg / "low" / "b.py").write_text("")
    modules = module_names(pkg)
    assert imports_of("aemia.low.a", modules["aemia.low.a"], modules) == {"aemia.high.mod", "aemia.low.b",
                                                                          "aemia.high"}
    assert imports_of("aemia.high.mod", modules["aemia.high.mod"], modules) == set()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
