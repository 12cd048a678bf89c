"""Rules of the code's layout, read from src/ by its syntax tree (issue 27): commands never import each
other (what they share lives in src/petseg/), modules import each other without cycles (not even inside
functions or under TYPE_CHECKING), imports sit at the top of modules but for a few deliberate late
ones, and no module grows past 350 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LATE_IMPORTS = 30  # deliberate ones: torch after Hydra parsed the command line, optional Gradio, ...
MAX_MODULE_LINES = 350
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


def test_imports_have_no_cycle_anywhere() -> None:
    """Module level, inside functions and under ``if TYPE_CHECKING``: each import is an edge."""
    trees = modules()
    graph = {m: imported(t, set(trees), top_level_only=False) - {m} for m, t in trees.items()}
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


def late_imports(tree: ast.Module) -> list[int]:
    """Line numbers of the imports that are not statements of the module's body itself."""
    top = {id(node) for node in tree.body}
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top
    ]


def test_few_imports_inside_functions_or_blocks() -> None:
    late = {m: lines for m, t in modules().items() if (lines := late_imports(t))}
    count = sum(len(lines) for lines in late.values())
    assert count <= MAX_LATE_IMPORTS, f"{count} late imports (at most {MAX_LATE_IMPORTS}): {late}"


def test_no_module_over_the_line_limit() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"


def test_root_and_sample_are_defined_once_under_tests() -> None:
    tests = Path(__file__).resolve().parent
    for name in ("ROOT", "SAMPLE"):
        owners = [
            p.name
            for p in tests.rglob("*.py")
            if any(line.startswith(f"{name} =") for line in p.read_text().splitlines())
        ]
        assert len(owners) <= 1, f"{name} defined in {owners}: import it from tests/helpers.py"
