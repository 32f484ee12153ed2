"""The two training modes, on tiny real data: the reproducible one gives the same epochs and the
same metrics twice; the time-fitted one lowers the epoch count to its budget. Both record the
machine, the planned and completed epochs and why training stopped."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from src.config import AppConfig
from src.training.train import TrainResult, train_model
from tests.helpers.training import tiny_config, tiny_prepared

METRICS = ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1", "epochs_completed")


def _run_data(result: TrainResult, cfg: AppConfig) -> Any:
    return MlflowClient(tracking_uri=cfg.tracking_uri).get_run(result.run_id).data


@pytest.mark.integration  # real data: shared_data_dir
def test_reproducible_mode_repeats_epochs_and_metrics(
    tiny_run: tuple[TrainResult, AppConfig], tiny_npz: Path, tmp_path: Path
) -> None:
    first, first_cfg = tiny_run  # the smoke profile: no time budget -> reproducible
    assert first_cfg.train.mode == "reproducible"
    again_cfg = tiny_config(tmp_path, ema_decay=0.9)
    second = train_model(tiny_prepared(tiny_npz), again_cfg)
    for key in METRICS:
        assert round(second.metrics[key], 4) == round(first.metrics[key], 4), key
    assert first.metrics["epochs_completed"] == first_cfg.train.max_epochs == 2
    data = _run_data(second, again_cfg)
    assert data.params["training_mode"] == "reproducible"
    assert data.params["deterministic"] == "True"
    assert data.params["wall_clock_cut_minutes"] == "None"  # max_time_minutes is not applied
    assert data.tags["stop_reason"] == "max_epochs 2 reached"


@pytest.mark.integration  # real data: shared_data_dir
def test_every_run_records_the_machine_and_the_epochs(
    tiny_run: tuple[TrainResult, AppConfig],
) -> None:
    result, cfg = tiny_run
    data = _run_data(result, cfg)
    assert data.params["torch_version"] == torch.__version__
    assert data.params["torch_threads"] == str(torch.get_num_threads())
    # The device the run trained on: a GPU's name where torch sees one and the settings allow it.
    gpu = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")
    assert data.params["device"] == (torch.cuda.get_device_name(0) if gpu else "cpu")
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        None,
    )
    # Where /proc/cpuinfo names no model (ARM, some VMs), the platform's own name is recorded.
    assert data.params["machine_cpu"] == (
        cpu or platform.processor() or platform.machine() or "unknown"
    )
    assert data.params["max_epochs"] == "2"
    assert data.metrics["planned_epochs"] == 2.0
    assert data.metrics["epochs_completed"] == 2.0
    assert data.tags["training_mode"] == "reproducible"
    assert "(issue" not in data.tags.get("mlflow.note.content", "")


@pytest.mark.integration  # real data: shared_data_dir
@pytest.mark.parametrize("budget_minutes", [1e-4])
def test_time_fitted_mode_fits_the_epochs_to_the_budget(
    tiny_npz: Path, tmp_path: Path, budget_minutes: float
) -> None:
    """A budget shorter than one epoch: one epoch is trained of max_epochs 3, the schedule was
    planned for one, and the run says so; the wall-clock cut applies in this mode."""
    cfg = tiny_config(
        tmp_path, mode="time-fitted", max_epochs=3, time_budget_minutes=budget_minutes
    )
    result = train_model(tiny_prepared(tiny_npz), cfg)
    data = _run_data(result, cfg)
    assert data.params["training_mode"] == "time-fitted"
    assert data.params["deterministic"] == "False"
    assert data.params["wall_clock_cut_minutes"] == str(cfg.train.max_time_minutes)
    assert data.metrics["epochs_completed"] == 1.0
    assert data.metrics["planned_epochs"] == 1.0
    assert data.tags["stop_reason"] == "time budget: the 1 planned epochs done"
    assert "1 epochs fill the" in data.tags["epoch_plan"]
