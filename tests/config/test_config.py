from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from src.config import PROJECT_ROOT, ConfigError, load_config


def test_defaults_come_from_configs_dir() -> None:
    cfg = load_config(environ={})
    assert cfg.profile == "default"
    assert cfg.data.split_fractions == (0.70, 0.15, 0.15)
    assert cfg.data.split_seed == 42
    assert cfg.mlflow.registered_model_name == "clothing-classifier"
    assert cfg.tracking_uri.startswith("sqlite:////")  # made absolute against the project root


def test_environment_overrides_yaml() -> None:
    cfg = load_config(
        environ={
            "DATA_SOURCE": "/tmp/fmnist",
            "TRAIN_MAX_EPOCHS": "3",
            "TRAIN_WIDTHS": "[8, 16]",
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        }
    )
    assert cfg.data.source == "/tmp/fmnist"
    assert cfg.train.max_epochs == 3
    assert cfg.train.widths == (8, 16)
    assert cfg.tracking_uri == "http://127.0.0.1:5000"


def test_profile_applies_and_explicit_overrides_win() -> None:
    cfg = load_config("smoke", overrides={"train": {"max_epochs": 2}}, environ={})
    assert cfg.profile == "smoke"
    assert cfg.train.limit_train_samples is not None
    assert cfg.train.max_epochs == 2


def test_profile_from_environment() -> None:
    assert load_config(environ={"PROFILE": "smoke"}).profile == "smoke"


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="smoke"):
        load_config("nope", environ={})


def test_invalid_value_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"train\.max_epochs"):
        load_config(environ={"TRAIN_MAX_EPOCHS": "-1"})


def test_unknown_key_in_yaml_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(PROJECT_ROOT / "configs", tmp_path, dirs_exist_ok=True)
    with (tmp_path / "train.yaml").open("a") as train:
        train.write("max_epoch: 3\n")
    monkeypatch.setenv("CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"train\.max_epoch: Extra inputs"):
        load_config(environ={"CONFIG_DIR": str(tmp_path)})


def test_broken_yaml_says_which_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data.yaml").write_text("source: [unclosed\n")
    monkeypatch.setenv("CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"data\.yaml"):
        load_config(environ={})


@pytest.mark.parametrize(
    "location", ["s3://bucket/mlflow", "mlflow-artifacts:/experiments", "file:///srv/mlartifacts"]
)
def test_artifact_uri_is_kept(location: str) -> None:
    cfg = load_config(overrides={"mlflow": {"artifact_location": location}})
    assert cfg.mlflow.resolved_artifact_location(Path("/project")) == location


def test_relative_artifact_path_resolves_under_the_root(tmp_path: Path) -> None:
    cfg = load_config(overrides={"mlflow": {"artifact_location": "mlartifacts"}})
    resolved = cfg.mlflow.resolved_artifact_location(tmp_path)
    assert resolved == (tmp_path / "mlartifacts").resolve().as_uri()
