"""Configuration for tests: always ``configs/`` (the one source of defaults) plus the test's changes.

Section models have no defaults, so a test never builds one from scratch: it takes the loaded
section and changes what it needs, validated like any configuration.
"""

from __future__ import annotations

from typing import Any

from src.config import (
    AppConfig,
    DataConfig,
    GateConfig,
    MonitorConfig,
    ServeConfig,
    TrainConfig,
    load_config,
)


def app_config(profile: str | None = None, **sections: dict[str, Any]) -> AppConfig:
    """``configs/`` (and ``profile``) with ``sections`` overriding keys, ignoring the environment."""
    return load_config(profile, overrides=sections, environ={})


def data_config(**updates: Any) -> DataConfig:
    return app_config(data=updates).data


def train_config(**updates: Any) -> TrainConfig:
    return app_config(train=updates).train


def gate_config(**updates: Any) -> GateConfig:
    return app_config(gate=updates).gate


def monitor_config(**updates: Any) -> MonitorConfig:
    return app_config(monitor=updates).monitor


def serve_config(**updates: Any) -> ServeConfig:
    return app_config(serve=updates).serve
