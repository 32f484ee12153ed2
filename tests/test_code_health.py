"""House rules a reviewer would otherwise check by eye: every function fits on a screen."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("src", "flows", "deployments")
MAX_FUNCTION_LINES = 80


def long_functions(folders: tuple[str, ...] = CHECKED) -> list[str]:
    """``path:line name (N lines)`` for each function (nested ones included) over the limit."""
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    length = (node.end_lineno or node.lineno) - start + 1
                    if length > MAX_FUNCTION_LINES:
                        where = path.relative_to(ROOT)
                        found.append(f"{where}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_80_lines() -> None:
    too_long = long_functions()
    assert not too_long, (
        f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {too_long}"
    )
