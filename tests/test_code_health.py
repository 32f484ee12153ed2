"""House rules a reviewer would otherwise check by eye: every function fits on a screen, and no
comment or docstring quotes a timing figure (they drift; the README holds the measured ones)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
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


# A measured duration or speed: "~12 s", "39 s", "2.3 ms", "1 minute", "723 img/s", "10x faster".
TIMING = re.compile(
    r"(?<![\w.])~?\d[\d,.]*\s*(?:-\s*\d[\d,.]*\s*)?"
    r"(?:ms|µs|s|sec|seconds?|min|minutes?|hours?|img/s|images/s)(?![\w/])"
    r"|\d[\d.]*\s*[x×]\s+(?:faster|slower)"
)
# Required limits are not measurements: "acceptance: <= 5 s", "target ...".
REQUIREMENT = re.compile(r"acceptance|target|<=|>=|at most|at least", re.IGNORECASE)


def prose(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and docstring line of ``path``."""
    source = path.read_text()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                first = node.body[0].lineno
                yield from ((first + i, line) for i, line in enumerate(doc.splitlines()))


def timing_figures(folders: tuple[str, ...] = (*CHECKED, "benchmarks")) -> list[str]:
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, text in prose(path):
                if TIMING.search(text) and not REQUIREMENT.search(text):
                    found.append(f"{path.relative_to(ROOT)}:{line}: {text.strip()}")
    return found


def test_no_timing_figures_in_comments_or_docstrings() -> None:
    figures = timing_figures()
    assert not figures, (
        "timing figures in comments/docstrings drift from the measurements; say it without the "
        f"number (the README and benchmarks/ hold them): {figures}"
    )
