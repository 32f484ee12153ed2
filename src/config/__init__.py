"""Typed, validated configuration.

Every setting has its one default in ``configs/<section>.yaml`` (the models hold types and
bounds, no defaults; a missing key fails on load with its name). Precedence (lowest to highest):
``configs/*.yaml`` < ``configs/profiles/<PROFILE>.yaml`` < environment variables < explicit
overrides passed to :func:`load_config`.

Each section owns an environment prefix, so ``DATA_SOURCE`` sets ``data.source``,
``TRAIN_MAX_EPOCHS`` sets ``train.max_epochs``, ``MLFLOW_TRACKING_URI`` sets ``mlflow.tracking_uri``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from src.config.data import DataConfig
from src.config.edge import EdgeConfig
from src.config.flow import FlowConfig
from src.config.gate import GateConfig
from src.config.monitor import MonitorConfig
from src.config.sections import PROJECT_ROOT, AppConfig, MlflowConfig, PathsConfig
from src.config.serve import ServeConfig
from src.config.train import TrainConfig
from src.package import DEFAULT_CONFIG_DIR

__all__ = [
    "PROJECT_ROOT",
    "AppConfig",
    "ConfigError",
    "DataConfig",
    "EdgeConfig",
    "FlowConfig",
    "GateConfig",
    "MlflowConfig",
    "MonitorConfig",
    "PathsConfig",
    "ServeConfig",
    "TrainConfig",
    "load_config",
]

CONFIG_DIR_ENV = "CONFIG_DIR"
# A profile is a file name in configs/profiles/, never a path (no "/", no "..").
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class ConfigError(ValueError):
    """A configuration file or environment variable holds an invalid value."""


def _config_dir() -> Path:
    return Path(os.environ.get(CONFIG_DIR_ENV, DEFAULT_CONFIG_DIR))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{path}: not valid YAML ({exc}); fix the file or restore it from git."
        ) from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level.")
    return loaded


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_value(raw: str) -> Any:
    # JSON lets lists/dicts/numbers come through env vars; plain strings stay strings.
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for section_name, field in AppConfig.model_fields.items():
        section_cls = field.annotation
        if not (isinstance(section_cls, type) and issubclass(section_cls, BaseModel)):
            continue
        prefix = getattr(section_cls, "env_prefix", section_name.upper() + "_")
        for name in section_cls.model_fields:
            key = f"{prefix}{name.upper()}"
            if key in environ:
                overrides.setdefault(section_name, {})[name] = _env_value(environ[key])
    return overrides


def load_config(
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> AppConfig:
    """Load ``configs/``, apply the profile, environment and overrides, and validate."""
    env = dict(os.environ if environ is None else environ)
    config_dir = _config_dir()
    merged: dict[str, Any] = {}
    for path in sorted(config_dir.glob("*.yaml")):
        merged = _deep_merge(merged, {path.stem: _read_yaml(path)})
    profile = profile or env.get("PROFILE") or None
    if profile:
        profile_path = config_dir / "profiles" / f"{profile}.yaml"
        if not PROFILE_NAME.fullmatch(profile) or not profile_path.is_file():
            known = sorted(p.stem for p in (config_dir / "profiles").glob("*.yaml"))
            raise ConfigError(
                f"Unknown profile {profile[:80]!r}: a profile is the name of a file in "
                f"{config_dir / 'profiles'}; choose one of {known}."
            )
        merged = _deep_merge(merged, _read_yaml(profile_path))
    merged = _deep_merge(merged, _env_overrides(env))
    merged = _deep_merge(merged, overrides or {})
    merged["profile"] = profile or "default"
    try:
        return AppConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(_describe(err, config_dir) for err in exc.errors())
        raise ConfigError(f"Invalid configuration: {problems}") from exc


def _describe(err: Any, config_dir: Path) -> str:
    where = ".".join(str(part) for part in err["loc"])
    if err["type"] == "missing" and len(err["loc"]) == 1:
        return f"{where}: missing; add the file {config_dir / f'{where}.yaml'}"
    if err["type"] == "missing" and len(err["loc"]) == 2:
        section, key = err["loc"]
        return f"{where}: missing; add `{key}:` to {config_dir / f'{section}.yaml'}"
    return f"{where}: {err['msg']}"
