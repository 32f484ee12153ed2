"""Helpers for the monitoring tests (fixtures are in tests/monitoring/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deployments import postgres
from src.config import AppConfig
from tests.helpers.api import Registry, make_config


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
PG_BIN = postgres.pg_bin() or Path("initdb-not-installed")


def as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv
