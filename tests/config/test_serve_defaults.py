"""The serve section: configs/serve.yaml and ServeConfig's defaults agree, and every setting is read."""

from __future__ import annotations

from pathlib import Path

import yaml

from src.config import ServeConfig

ROOT = Path(__file__).resolve().parents[2]


def test_serve_yaml_and_model_defaults_agree() -> None:
    written = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    defaults = ServeConfig().model_dump()
    assert set(written) == set(defaults) - {"api_key"}
    for key, value in written.items():
        assert defaults[key] == value, f"serve.{key}: YAML {value!r}, model {defaults[key]!r}"


def test_every_serve_setting_is_read_by_the_serving_code() -> None:
    code = "\n".join(p.read_text() for p in (ROOT / "src" / "serving").glob("*.py"))
    unread = [key for key in ServeConfig.model_fields if f".{key}" not in code]
    assert not unread, f"serve settings nothing reads: {unread}"
