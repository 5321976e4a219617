"""The subpackages of ``src/aemia`` import each other without a cycle, function-level imports included.

Every ``import``/``from ... import`` anywhere in a module (top level, inside functions, under
``TYPE_CHECKING``) counts, read with :mod:`ast` so nothing is imported. The documented layer order (README's
architecture section, :mod:`aemia.runs`) is checked too: a package imports only packages to its left.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "aemia"

#: The layer order of README's architecture section; packages on one level do not import each other.
LAYERS: list[set[str]] = [
    {"utils"}, {"data"}, {"evaluate"}, {"nets"}, {"train"}, {"runs"}, {"infer"},
    {"pretrain", "active", "synth", "semisup", "weak"}, {"recipes"}, {"cli"},
]


def subpackages() -> set[str]:
    return {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def _imported(node: ast.AST, module: tuple[str, ...]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against the importing module's package
            base = ["aemia", *module[: len(module) - node.level]]
            return [".".join(base + ([node.module] if node.module else []))]
        return [node.module or ""]
    return []


def import_edges(src: Path = SRC) -> dict[str, dict[str, list[str]]]:
    """``{importer package: {imported package: ["file:line", ...]}}`` over every import in every module."""
    packages = {p.name for p in src.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if len(rel.parts) < 2:  # aemia/errors.py, aemia/__init__.py: modules, not packages
            continue
        module = rel.with_suffix("").parts
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in _imported(node, module):
                parts = name.split(".")
                if parts[0] == "aemia" and len(parts) > 1 and parts[1] in packages and parts[1] != rel.parts[0]:
                    edges[rel.parts[0]][parts[1]].append(f"{rel}:{node.lineno}")
    return edges


def find_cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Every strongly connected component with more than one package (Tarjan), as sorted names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    nodes = sorted(set(edges) | {d for v in edges.values() for d in v})

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_known_cycle() -> None:
    edges = {"a": {"b": ["x"]}, "b": {"c": ["x"]}, "c": {"a": ["x"]}, "d": {"a": ["x"]}}
    assert find_cycles(edges) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b": ["x"]}, "b": {}}) == []


def test_function_level_and_relative_imports_are_counted(tmp_path: Path) -> None:
    for pkg, body in {"low": "def f():\n    from aemia.high.mod import g\n", "high": "from ..low import x\n"}.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
        (tmp_path / pkg / "mod.py").write_text(body)
    edges = import_edges(tmp_path)
    assert set(edges["low"]) == {"high"} and set(edges["high"]) == {"low"}
    assert find_cycles(edges) == [["high", "low"]]


def test_no_import_cycle_between_subpackages() -> None:
    edges = import_edges()
    cycles = find_cycles(edges)
    where = {tuple(c): [f"{a} -> {b}: {edges[a][b][0]}" for a in c for b in c if b in edges.get(a, {})] for c in cycles}
    assert not cycles, f"package import cycles: {where}"


def test_every_subpackage_has_a_layer_and_imports_only_lower_layers() -> None:
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    assert subpackages() <= set(level), f"packages without a layer: {sorted(subpackages() - set(level))}"
    upward = [f"{a} -> {b} ({where[0]})" for a, deps in import_edges().items() for b, where in deps.items()
              if level[b] >= level[a]]
    assert not upward, "imports of a package at the same or a higher layer: " + "; ".join(sorted(upward))
