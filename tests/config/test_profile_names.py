"""A profile is a name in configs/profiles/, never a path to some other YAML."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from src.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_a_profile_name_cannot_reach_a_yaml_outside_the_profiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(CONFIGS, tmp_path / "configs")
    planted = tmp_path / "planted.yaml"
    planted.write_text("serve:\n  port: 4321\n")  # valid settings: loading it would succeed
    monkeypatch.setenv("CONFIG_DIR", str(tmp_path / "configs"))
    for name in ("../../planted", str(tmp_path / "planted"), "smoke/../../../planted"):
        with pytest.raises(ConfigError, match=r"Unknown profile .*a profile is the name of a file"):
            load_config(profile=name, environ={})
        with pytest.raises(ConfigError, match="Unknown profile"):
            load_config(environ={"PROFILE": name})
    assert load_config("smoke", environ={}).profile == "smoke"
