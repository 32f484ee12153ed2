"""TrainFlowParams: typed flow parameters layered over configs/."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.train_flow import TrainFlowParams, where_to_look
from src import cli
from src.config import ConfigError


def test_empty_params_mean_configured_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROFILE", raising=False)
    cfg = TrainFlowParams().load_config()
    assert cfg.profile == "default"
    assert cfg.gate.min_accuracy == 0.90 and cfg.gate.min_macro_f1 == 0.90
    assert TrainFlowParams().overrides() == {}


def test_smoke_profile_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROFILE", raising=False)
    params = TrainFlowParams(
        profile="smoke", data_source="/tmp/somewhere", max_epochs=2, min_accuracy=0.5
    )
    cfg = params.load_config()
    assert cfg.profile == "smoke"
    assert cfg.train.max_epochs == 2  # the parameter beats the profile's 1
    assert cfg.train.limit_train_samples is not None  # from the profile
    assert cfg.data.source == "/tmp/somewhere"
    assert cfg.gate.min_accuracy == 0.5


def test_profile_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILE", "smoke")
    assert TrainFlowParams().load_config().profile == "smoke"


def test_parameters_are_validated() -> None:
    with pytest.raises(ValidationError):
        TrainFlowParams(max_epochs=0)
    with pytest.raises(ValidationError):
        TrainFlowParams(comparison="coin-flip")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TrainFlowParams(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="Unknown profile 'nope'"):
        TrainFlowParams(profile="nope").load_config()


def test_main_reports_a_bad_profile_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--profile", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Unknown profile 'nope'" in err
    assert cli.main(["train", "--max-epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "max_epochs" in err


def test_where_to_look_names_the_ui_the_version_and_the_metrics() -> None:
    text = where_to_look(
        {
            "tracking_uri": "sqlite:////repo/mlflow.db",
            "registered_model_name": "clothing-classifier",
            "candidate_version": "4",
            "run_id": "abc",
            "promoted": True,
            "production_version": "4",
            "test_accuracy": 0.9512,
            "test_macro_f1": 0.9508,
            "per_class_f1": {"Shirt": 0.85},
            "gate_reasons": ["accuracy 0.9512 meets the floor 0.9000"],
            "data_md5": "d",
            "split_hash": "s",
        }
    )
    assert "mlflow ui --backend-store-uri sqlite:////repo/mlflow.db" in text
    assert "Production: clothing-classifier v4" in text
    assert "accuracy 0.9512" in text and "Shirt" in text
