"""Resuming training from a checkpoint (``train.resume_from``: a path, or "last" = the newest
``last.ckpt`` under ``checkpoint_dir``): the epochs already trained, the epoch plan and the time
already spent come back from the checkpoint, and training goes on from there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from src.config import AppConfig
from src.training.train import TrainResult, train_model
from tests.helpers.training import tiny_config, tiny_prepared


def _history(result: TrainResult, cfg: AppConfig, folder: Path) -> list[dict[str, float]]:
    path = mlflow.artifacts.download_artifacts(
        run_id=result.run_id,
        artifact_path="history.json",
        dst_path=str(folder),
        tracking_uri=cfg.tracking_uri,
    )
    return list(json.loads(Path(path).read_text())["history"])


def _run_data(result: TrainResult, cfg: AppConfig) -> Any:
    return MlflowClient(tracking_uri=cfg.tracking_uri).get_run(result.run_id).data


def _saved_state(checkpoint: Path) -> dict[str, Any]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    # The module's history and clock, and the budget callback's plan and stop.
    return {**state["fashion_state"], **state["callbacks"]["TrainingBudget"]}


@pytest.mark.integration  # real data: shared_data_dir
def test_resume_from_a_finished_runs_checkpoint_restores_it_all(
    tiny_run: tuple[TrainResult, AppConfig], tiny_npz: Path, tmp_path: Path
) -> None:
    """A path to the last checkpoint of a run that trained its 2 epochs: nothing is left to
    train, and the resumed run reports the 2 epochs, their history, plan and time."""
    first, first_cfg = tiny_run
    checkpoint = (
        first_cfg.paths.resolve(first_cfg.train.checkpoint_dir) / first.run_id / "last.ckpt"
    )
    assert checkpoint.is_file()
    saved = _saved_state(checkpoint)
    cfg = tiny_config(tmp_path, ema_decay=0.9, resume_from=str(checkpoint))
    resumed = train_model(tiny_prepared(tiny_npz), cfg)

    data = _run_data(resumed, cfg)
    assert data.tags["resumed_from"] == str(checkpoint)
    history = _history(resumed, cfg, tmp_path / "resumed")
    assert history == _history(first, first_cfg, tmp_path / "first") == saved["history"]
    assert [row["epoch"] for row in history] == [1.0, 2.0]
    assert resumed.metrics["epochs_completed"] == 2.0
    assert resumed.metrics["planned_epochs"] == float(saved["planned_epochs"]) == 2.0
    # The fit time across sessions is the first session's (this one trained nothing).
    assert resumed.metrics["training_total_minutes"] * 60 >= saved["elapsed_s"]
    assert resumed.metrics["training_total_minutes"] * 60 >= history[-1]["elapsed_s"]
    assert data.tags["stop_reason"] == "max_epochs 2 reached"


@pytest.mark.integration  # real data: shared_data_dir
def test_resume_last_goes_on_where_a_time_fitted_run_stopped(
    tiny_npz: Path, tmp_path: Path
) -> None:
    """A budget that fit 1 of 3 epochs, then ``resume_from: last`` with time to spare: epochs 2
    and 3 are trained on top of the restored epoch 1, and the clock goes on from the first
    session's time."""
    short = tiny_config(tmp_path, mode="time-fitted", max_epochs=3, time_budget_minutes=1e-4)
    first = train_model(tiny_prepared(tiny_npz), short)
    assert first.metrics["epochs_completed"] == 1.0 and first.metrics["planned_epochs"] == 1.0
    checkpoint = tmp_path / "outputs" / "checkpoints" / first.run_id / "last.ckpt"
    saved = _saved_state(checkpoint)
    assert len(saved["history"]) == 1

    longer = tiny_config(
        tmp_path, mode="time-fitted", max_epochs=3, time_budget_minutes=60.0, resume_from="last"
    )
    resumed = train_model(tiny_prepared(tiny_npz), longer)

    data = _run_data(resumed, longer)
    assert data.tags["resumed_from"] == str(checkpoint)
    history = _history(resumed, longer, tmp_path / "resumed")
    assert [row["epoch"] for row in history] == [1.0, 2.0, 3.0]
    assert history[0] == saved["history"][0]  # restored, not trained again
    assert resumed.metrics["epochs_completed"] == 3.0
    assert resumed.metrics["planned_epochs"] == 3.0  # re-planned for the time now given
    assert data.tags["stop_reason"].startswith("max_epochs 3 reached (the cap")
    # The clock starts at the first session's time: every resumed epoch ends after it, and the
    # total across sessions exceeds this session's own fit by about the restored time.
    elapsed = [row["elapsed_s"] for row in history]
    assert elapsed == sorted(elapsed) and elapsed[1] > saved["elapsed_s"]
    total_s = resumed.metrics["training_total_minutes"] * 60
    session_s = resumed.metrics["train_minutes"] * 60
    assert total_s - session_s >= 0.5 * saved["elapsed_s"], (total_s, session_s, saved)


@pytest.mark.integration  # real data: shared_data_dir
def test_resume_last_without_a_checkpoint_says_what_to_do(tiny_npz: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, resume_from="last")
    with pytest.raises(FileNotFoundError, match=r"no last\.ckpt under .*unset TRAIN_RESUME_FROM"):
        train_model(tiny_prepared(tiny_npz), cfg)
