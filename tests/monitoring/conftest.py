"""Fixtures for the monitoring tests: the API test registry (tiny models in a temp sqlite MLflow)
and a prediction log in a temp folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.api.conftest import (  # noqa: F401  (fixtures registered for this package too)
    registry,
    server_factory,
)
from tests.api.test_web_page import browser_page  # noqa: F401
from tests.helpers.api import free_port
from tests.helpers.monitoring import (
    PG_BIN,
    as_postgres,
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg2://...`` of a fresh database in a temporary cluster."""
    if not (PG_BIN / "initdb").is_file():
        pytest.fail(f"PostgreSQL is missing ({PG_BIN}/initdb): apt-get install -y postgresql")
    folder = Path(tempfile.mkdtemp(prefix="pg-monitoring-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    run = partial(subprocess.run, check=True, capture_output=True, timeout=120)
    run(
        as_postgres(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        )
    )
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options]
    run(as_postgres([*pg_ctl, "-w", "-t", "60", "start"]))
    try:
        run(
            [
                str(PG_BIN / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "monitoring",
            ]
        )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/monitoring"
    finally:
        subprocess.run(
            as_postgres([*pg_ctl[:3], "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)
