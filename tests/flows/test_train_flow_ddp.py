"""Two CPU processes (DDP on gloo, spawned) train tiny data end to end through train-flow: one
epoch plan for both ranks, and the run's history, epochs and metrics intact in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.train_flow import TrainFlowParams, train_flow
from tests.helpers.flows import TinySources, use_project

pytestmark = pytest.mark.integration


def test_two_process_cpu_run_through_train_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str, tiny_sources: TinySources
) -> None:
    root = use_project(tmp_path / "project", tiny_sources.good, monkeypatch)
    # Two CPU processes on any host: on a GPU host "auto" would ask for two GPUs.
    monkeypatch.setenv("TRAIN_ACCELERATOR", "cpu")
    monkeypatch.setenv("TRAIN_DEVICES", "2")
    monkeypatch.setenv("TRAIN_MAX_EPOCHS", "2")
    # A time budget, so the plan is decided by rank 0's clock and broadcast (that ranks whose
    # clocks disagree follow rank 0's plan is tests/training/test_epoch_plan.py's).
    monkeypatch.setenv("TRAIN_MODE", "time-fitted")
    monkeypatch.setenv("TRAIN_TIME_BUDGET_MINUTES", "30")

    state = train_flow(TrainFlowParams(profile="smoke"), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["promoted"], summary

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    run = client.get_run(summary["run_id"])
    assert run.data.params["resolved_strategy"] == "ddp_spawn"
    assert run.data.params["training_processes"] == "2"
    assert run.data.metrics["epochs_completed"] == 2.0
    assert run.data.metrics["planned_epochs"] == 2.0
    history_file = Path(client.download_artifacts(run.info.run_id, "history.json", str(tmp_path)))
    history = json.loads(history_file.read_text())["history"]
    assert [row["epoch"] for row in history] == [1.0, 2.0]
    assert all("val_macro_f1" in row for row in history)
    assert run.data.metrics["training_total_minutes"] > 0
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
