"""The project's import graph: imports run one way (no cycles, lazy imports inside functions included),
and no module imports another module's private (underscore) names."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("Model", "Utils")
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    """Top-level scripts and every module of the packages, subpackages included (``Utils.objectives.dtkd``)."""
    mods = {p.stem: p for p in REPO.glob("*.py")}
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            parts = [pkg, *p.relative_to(REPO / pkg).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = p
    return mods


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported project module, names taken from it) for every import statement, at any depth."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
            if base in known:
                out.append((base, [n for n in names if f"{base}.{n}" not in known]))
            out += [(m, []) for m in submodules]
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for name, path in mods.items():
        for target, names in _imports(name, path, known):
            if target == name:  # e.g. a worker function named through the package for pickling
                continue
            graph[name].add(target)
            private += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph, _ = _graph()
    assert "Utils.checkpoint" in graph["Model"] and "Model" not in graph["Utils.checkpoint"]
    cycles = [sorted(c) for c in _cycles(graph) if c not in KNOWN_CYCLES]
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_names_imported_across_modules():
    _, private = _graph()
    assert not private, private


def test_the_checker_sees_lazy_imports_and_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    graph, _ = _graph()
    assert "Utils.lpips" in graph["Utils.metrics"]  # imported inside calculate_lpips
    assert "Utils.objectives.teachers" in graph["Utils.objectives.features"]  # subpackages are seen
    assert "Utils.objectives.fakd" in graph["Utils.objectives"]
