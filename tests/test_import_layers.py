"""Imports run one way: no cycle among the modules of src/ and flows/ (imports inside functions
and ``TYPE_CHECKING`` blocks count too), and each layer keeps off what it must not import."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("src", "flows")
# (modules under this prefix, may not import anything under these prefixes)
FORBIDDEN = (
    ("src", ("flows", "prefect")),
    ("src.monitoring", ("fastapi", "starlette")),
    ("src.serving", ("torch", "lightning", "mlflow", "prefect")),
)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    return {
        module_name(path, root): path
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
    }


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_names(module: str, path: Path) -> Iterator[str]:
    """Every module name an import statement anywhere in the file names (``from X import y``
    gives X and X.y, as y may be a submodule)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                anchor = here[: len(here) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules importing it runs: each named module and its packages'
    ``__init__``, except the importer's own packages (already running when it is imported)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        own = set(ancestors(module))
        targets: set[str] = set()
        for name in imported_names(module, path):
            for candidate in [*ancestors(name), name]:
                if candidate in modules and candidate not in own and candidate != module:
                    targets.add(candidate)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One concrete loop through ``component``, for the failure message."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:
        step = sorted(graph[path[-1]] & members)
        target = next((t for t in step if t == start), None) or next(
            (t for t in step if t not in seen), step[0]
        )
        path.append(target)
        if target == start or target in seen:
            return " -> ".join(path)
        seen.add(target)


def forbidden_imports(modules: dict[str, Path]) -> list[str]:
    found = []
    for module, path in modules.items():
        for layer, banned in FORBIDDEN:
            if module != layer and not module.startswith(layer + "."):
                continue
            for name in set(imported_names(module, path)):
                if any(name == b or name.startswith(b + ".") for b in banned):
                    found.append(f"{module} imports {name}")
    return sorted(found)


def test_no_import_cycle_among_src_and_flows() -> None:
    graph = import_graph(project_modules())
    loops = [cycle_path(graph, component) for component in cycles(graph)]
    assert not loops, "import cycles (move what both sides need to a lower module):\n" + "\n".join(
        loops
    )


def test_each_layer_keeps_off_what_it_must_not_import() -> None:
    found = forbidden_imports(project_modules())
    assert not found, "imports across a layer's boundary:\n" + "\n".join(found)


def test_the_checks_see_a_lazy_cycle_and_a_banned_import(tmp_path: Path) -> None:
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "flows").mkdir()
    files = {
        "src/__init__.py": "",
        "src/pkg/__init__.py": "def later():\n    from src.pkg.low import x\n",
        "src/pkg/low.py": "from src.high import y\n",
        "src/high.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from src.pkg import z\n",
        "src/pkg/web.py": "import prefect\nfrom . import low\n",
        "flows/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    modules = project_modules(tmp_path)
    assert cycles(import_graph(modules)) == [["src.high", "src.pkg", "src.pkg.low"]]
    assert "src.pkg.web" not in {m for c in cycles(import_graph(modules)) for m in c}
    assert forbidden_imports(modules) == ["src.pkg.web imports prefect"]
