"""The README stays an overview whose links, anchors and commands are real. (Links between the
pages in docs/ are checked by `make docs`: mkdocs build --strict.)"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from src.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 200
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) gives a heading; GitHub's agrees on plain ones."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # no headings inside code blocks
    return {slug(h) for h in re.findall(r"(?m)^#{1,6}\s+(.+?)\s*$", text)}


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` whose file or heading does not exist."""
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    return broken


def code(text: str) -> str:
    """The code blocks and inline code of a markdown text, where commands are written."""
    blocks = re.findall(r"(?ms)^```.*?^```", text)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"(?ms)^```.*?^```", "", text))
    return "\n".join(blocks + spans)


def make_targets() -> set[str]:
    return set(re.findall(r"(?m)^([a-z][a-z-]*):", (ROOT / "Makefile").read_text()))


def test_the_readme_is_an_overview() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines; move reference to docs/"
    )


def test_the_readme_links_to_files_and_headings_that_exist() -> None:
    assert broken_links(README) == []


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_make_target_and_command_named_exists(page: Path) -> None:
    text = code(page.read_text())
    missing = sorted(set(re.findall(r"\bmake ([a-z][a-z-]*)", text)) - make_targets())
    commands = set(re.findall(r"\bclothing-classifier ([a-z][a-z-]*)", text))
    unknown = sorted(commands - COMMANDS.keys())
    assert missing == [] and unknown == [], f"{page.name}: make {missing}, commands {unknown}"


def test_slug_matches_mkdocs_anchors() -> None:
    assert slug("Behind a reverse proxy: the edge") == "behind-a-reverse-proxy-the-edge"
    assert slug("2. DVC: an S3 remote") == "2-dvc-an-s3-remote"
    assert slug("`make stack`") == "make-stack"
