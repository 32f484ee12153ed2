"""A run whose measured speed cannot fit the epoch floor into its budget says so before training,
in one line, and records it on the MLflow run; a run with room records no warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from src.training.train import train_model
from tests.helpers.training import tiny_config, tiny_prepared


@pytest.mark.integration  # real data: shared_data_dir
def test_a_budget_too_short_for_the_floor_is_said_and_recorded(
    tiny_npz: Path, tmp_path: Path
) -> None:
    said: list[tuple[int, str]] = []
    cfg = tiny_config(
        tmp_path,
        accelerator="cpu",  # the "Training on cpu" line below, also on a GPU host
        mode="time-fitted",
        max_epochs=1,
        time_budget_minutes=1e-4,
        min_epochs_warning=5,
    )
    result = train_model(
        tiny_prepared(tiny_npz), cfg, notify=lambda lvl, msg: said.append((lvl, msg))
    )
    warnings = [msg for lvl, msg in said if lvl == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "img/s" in warnings[0] and "TRAIN_TIME_BUDGET_MINUTES" in warnings[0]
    assert said[0][0] == logging.INFO and said[0][1].startswith("Training on cpu")
    tags = MlflowClient(tracking_uri=cfg.tracking_uri).get_run(result.run_id).data.tags
    assert tags["budget_warning"] == warnings[0]


@pytest.mark.integration  # real data: shared_data_dir
def test_a_budget_with_room_records_no_warning(tiny_npz: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path, mode="time-fitted", max_epochs=1, time_budget_minutes=30, min_epochs_warning=1
    )
    result = train_model(tiny_prepared(tiny_npz), cfg, notify=lambda lvl, msg: None)
    tags = MlflowClient(tracking_uri=cfg.tracking_uri).get_run(result.run_id).data.tags
    assert tags["budget_warning"] == ""
