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
from typing import Any

import pytest

from src.config import AppConfig
from tests.api.conftest import (  # noqa: F401  (fixtures re-exported for this package)
    Registry,
    free_port,
    make_config,
    model_sources,
    registry,
    server_factory,
)
from tests.api.test_web_page import browser_page  # noqa: F401
from tests.flows.conftest import prefect_api, prefect_server, tiny_sources  # noqa: F401


def monitored_config(
    reg: Registry, tmp_path: Path, monitor: dict[str, Any] | None = None, **serve: Any
) -> AppConfig:
    """The API test config with the prediction log in ``tmp_path`` (fast flushes)."""
    cfg = make_config(reg.tracking_uri, reg.name, **serve)
    settings = {
        "store_url": f"sqlite:///{tmp_path / 'predictions.db'}",
        "flush_interval_s": 0.05,
        "stats_interval_s": 0.2,
        **(monitor or {}),
    }
    return cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update=settings)})


# --- a throw-away PostgreSQL on 127.0.0.1 (Debian's package; the server refuses root) ------------
PG_BIN = Path(os.environ.get("STACK_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


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
        _as_postgres(
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
    run(_as_postgres([*pg_ctl, "-w", "-t", "60", "start"]))
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
            _as_postgres([*pg_ctl[:3], "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)
