"""Fixtures for the install tests: the project's wheel, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.install import build_wheel


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))
