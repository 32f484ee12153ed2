"""Fixtures for the monitoring tests: the API test registry (tiny models in a temp sqlite MLflow)
and a prediction log in a temp folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.config import AppConfig
from tests.api.conftest import (  # noqa: F401  (fixtures re-exported for this package)
    Registry,
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
