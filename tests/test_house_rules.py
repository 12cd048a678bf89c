"""Rules of the code's layout, read from src/ by its syntax tree (issue 27): commands never import each
other (what they share lives in src/petseg/), and modules import each other without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# src/*.py with a __main__ block are commands; oxford_pet.py is the data set module the layout names.
LIBRARY_AT_TOP = {"oxford_pet", "utils"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in SRC.rglob("*.py")}


def imported(tree: ast.Module, known: set[str], top_level_only: bool) -> set[str]:
    """The project modules ``tree`` imports (at module level only, or anywhere)."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def commands(trees: dict[str, ast.Module]) -> set[str]:
    def has_main(tree: ast.Module) -> bool:
        return any(isinstance(n, ast.If) and "__main__" in ast.dump(n.test) for n in tree.body)

    return {m for m, t in trees.items() if "." not in m and has_main(t) and m not in LIBRARY_AT_TOP}


def test_no_command_is_imported_by_another_module() -> None:
    trees = modules()
    scripts = commands(trees)
    assert {"train", "evaluate", "inference", "curves", "sweep_summary"} <= scripts
    offenders = {
        (m, s) for m, t in trees.items() for s in imported(t, scripts, top_level_only=False) if s != m
    }
    assert not offenders, f"commands imported by other modules (move the shared part to petseg/): {offenders}"


def test_module_level_imports_have_no_cycle() -> None:
    trees = modules()
    graph = {m: imported(t, set(trees), top_level_only=True) - {m} for m, t in trees.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
