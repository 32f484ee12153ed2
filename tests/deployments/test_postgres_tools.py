"""PostgreSQL's server tools are found by what is installed, never by a version in a path."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments import postgres
from tests.helpers.install import REPO_ROOT


def fake_debian(root: Path, *majors: str) -> Path:
    for major in majors:
        folder = root / major / "bin"
        folder.mkdir(parents=True)
        (folder / "initdb").write_text("#!/bin/sh\n")
        (folder / "initdb").chmod(0o755)
    return root


def test_the_newest_installed_major_is_taken_when_nothing_else_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STACK_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no pg_config, no initdb on PATH
    root = fake_debian(tmp_path / "postgresql", "9", "15", "17")  # 17 as on Debian 13
    assert postgres.pg_bin(root) == root / "17" / "bin"


def test_initdb_on_path_is_followed_to_its_real_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STACK_PG_BIN", raising=False)
    real = fake_debian(tmp_path / "postgresql", "16") / "16" / "bin"
    links = tmp_path / "links"
    links.mkdir()
    (links / "initdb").symlink_to(real / "initdb")  # Debian links a few tools into PATH
    monkeypatch.setenv("PATH", str(links))
    assert postgres.pg_bin(tmp_path / "none") == real


def test_stack_pg_bin_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_PG_BIN", str(tmp_path))
    assert postgres.pg_bin() == tmp_path


def test_nothing_installed_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STACK_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert postgres.pg_bin(tmp_path / "none") is None


def test_no_postgresql_version_is_written_into_a_path() -> None:
    for name in ("Makefile", "deployments/stack.py", "tests/helpers/monitoring.py"):
        assert "postgresql/15" not in (REPO_ROOT / name).read_text(), name
