"""The layer rule, checked on the source: a package imports only packages of lower layers, and no cycle.

Every `import slmkit.x` / `from slmkit.x import y` counts, including imports inside functions (a lazy
import is still a dependency). Layers, lowest first (docs/ARCHITECTURE.md explains each):
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "slmkit"

LAYERS = [
    {"errors", "paths", "plots"},
    {"corpus"},
    {"model"},
    {"formats", "sandbox"},
    {"serve", "hub"},
    {"export", "evaluate", "train", "merge", "agents"},
    {"app"},
    {"bench"},
    {"deploy"},
    {"demo"},
    {"cli"},
]
# Within the lowest layer, these imports are allowed (paths raises errors' type; plots writes via paths).
SAME_LAYER_OK = {("paths", "errors"), ("plots", "paths"), ("plots", "errors")}
# train sits beside the runtimes but only the demo and the CLI may call it.
ONLY_IMPORTED_BY = {"train": {"demo", "cli"}}


def top_package(module: str) -> str:
    """'slmkit.serve.base' -> 'serve'; 'slmkit.cli' -> 'cli'; 'slmkit' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute slmkit module names imported anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "slmkit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "slmkit":
                continue
            out.add(mod)
            for alias in node.names:  # `from slmkit.serve import engine` imports a module too
                candidate = f"{mod}.{alias.name}"
                if (PKG.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or \
                        (PKG.parent / candidate.replace(".", "/") / "__init__.py").exists():
                    out.add(candidate)
    return out


def module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        graph[module_name(path)] = {m for m in imports_of(path) if m != module_name(path)}
    return graph


def layer_of(package: str) -> int:
    for i, names in enumerate(LAYERS):
        if package in names:
            return i
    raise AssertionError(f"package slmkit.{package} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in graph.items():
        src = top_package(mod)
        if not src:
            continue
        for dep in deps:
            dst = top_package(dep)
            if not dst or dst == src:
                continue
            ls, ld = layer_of(src), layer_of(dst)
            if ld > ls or (ld == ls and (src, dst) not in SAME_LAYER_OK):
                bad.append(f"{mod} -> {dep} (layer {ls} imports layer {ld})")
            allowed = ONLY_IMPORTED_BY.get(dst)
            if allowed is not None and src not in allowed:
                bad.append(f"{mod} -> {dep} (only {', '.join(sorted(allowed))} may import slmkit.{dst})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):  # edges to packages count as edges to their __init__
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    import sys

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    pg: dict[str, set[str]] = defaultdict(set)
    for mod, deps in graph.items():
        src = top_package(mod)
        pg.setdefault(src, set())
        for dep in deps:
            if top_package(dep) != src:
                pg[src].add(top_package(dep))
    return cycles(dict(pg))


def test_every_package_has_a_layer():
    packages = {top_package(m) for m in module_graph()} - {""}
    for p in sorted(packages):
        layer_of(p)


def test_no_import_against_the_layers():
    assert layer_violations(module_graph()) == []


def test_no_import_cycles():
    graph = module_graph()
    assert package_cycles(graph) == []
    assert cycles(graph) == []


def test_the_checker_catches_a_back_edge_and_a_cycle():
    """The checks themselves can fail: a serve -> export edge and an a <-> b cycle are reported."""
    graph = {"slmkit.serve.x": {"slmkit.export.gguf"}, "slmkit.export.gguf": {"slmkit.serve.x"},
             "slmkit.app.ui": {"slmkit.train.trainer"}, "slmkit.train.trainer": set()}
    bad = layer_violations(graph)
    assert any("slmkit.serve.x -> slmkit.export.gguf" in b for b in bad)
    assert any("only cli, demo may import slmkit.train" in b for b in bad)
    assert cycles(graph) == [["slmkit.export.gguf", "slmkit.serve.x"]]


def test_stages_never_import_the_cli():
    graph = module_graph()
    for mod, deps in graph.items():
        assert "slmkit.cli" not in deps, f"{mod} imports slmkit.cli"
