"""The model half of the train-flow (train → evaluate → register → gate → promote) against a real
Prefect API and a real MLflow registry, with the data and training steps stood in by fakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import flows.train_flow as train_flow_module
from flows.train_flow import TrainFlowParams, train_flow
from src import registry
from src.config import AppConfig
from tests.flows.conftest import flow_run_artifacts
from tests.flows.fakes import Constant, FakePrepared, Memorizer, log_model_run, write_dataset


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str) -> Path:
    monkeypatch.setenv("PATHS_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_ARTIFACT_LOCATION", str(tmp_path / "mlartifacts"))
    monkeypatch.delenv("PROFILE", raising=False)
    return tmp_path


def _install(monkeypatch: pytest.MonkeyPatch, prepared: FakePrepared, models: list[Any]) -> None:
    monkeypatch.setattr(train_flow_module, "prepare_data", lambda cfg: prepared)
    queue = list(models)

    def fake_train(prepared: FakePrepared, cfg: AppConfig) -> Any:
        return log_model_run(cfg, queue.pop(0))

    import src.training

    monkeypatch.setattr(src.training, "train_model", fake_train, raising=False)


def test_first_run_promotes_and_a_worse_one_is_refused(
    env: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str
) -> None:
    prepared = write_dataset(env / "dataset.npz")
    with np.load(prepared.dataset_path) as data:
        perfect = Memorizer(data["x_test"], data["y_test"])
    _install(monkeypatch, prepared, [perfect, Constant(3), perfect])
    params = TrainFlowParams(min_accuracy=0.5, min_macro_f1=0.5)

    state = train_flow(params, return_state=True)
    assert state.is_completed()
    first = state.result()
    artifacts = flow_run_artifacts(prefect_api, str(state.state_details.flow_run_id))
    assert {"train-metrics", "gate-decision", "promotion"} <= set(artifacts)
    assert "Gate PASSED" in artifacts["gate-decision"]["data"]
    assert first["promoted"] and first["production_version"] == "1"
    assert first["test_accuracy"] == 1.0
    assert any("floors only" in r for r in first["gate_reasons"])

    second = train_flow(TrainFlowParams(min_accuracy=0.0, min_macro_f1=0.0))
    assert not second["promoted"]
    assert second["production_version"] == "1"
    assert any("significantly worse than Production v1" in r for r in second["gate_reasons"])

    third = train_flow(params)  # as good as Production: promoted
    assert third["promoted"] and third["production_version"] == "3"

    client = registry.get_client(f"sqlite:///{env}/mlflow.db")
    tags = {v: client.get_model_version("clothing-classifier", v).tags for v in "123"}
    assert [tags[v]["validation_status"] for v in "123"] == ["passed", "failed", "passed"]
    assert tags["2"]["split_hash"] == prepared.split_hash
    assert "significantly worse" in tags["2"]["gate_reasons"]
    assert registry.production_consistent(client, "clothing-classifier")
