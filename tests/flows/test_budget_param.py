"""The budget is a train-flow parameter and a ``make train`` setting: each reaches
``train.time_budget_minutes`` (and the mode ``train.mode``) in one step."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.train_flow import TrainFlowParams

ROOT = Path(__file__).resolve().parents[2]


def test_the_flow_parameters_set_the_budget_and_the_mode() -> None:
    cfg = TrainFlowParams(budget_minutes=12.5, mode="time-fitted").load_config()
    assert cfg.train.time_budget_minutes == 12.5 and cfg.train.mode == "time-fitted"
    fixed = TrainFlowParams(mode="reproducible", max_epochs=3).load_config()
    assert fixed.train.mode == "reproducible" and fixed.train.max_epochs == 3


def test_a_bad_budget_or_mode_is_refused() -> None:
    with pytest.raises(ValidationError):
        TrainFlowParams(budget_minutes=0)
    with pytest.raises(ValidationError):
        TrainFlowParams(mode="fast")  # type: ignore[arg-type]


def test_make_train_passes_budget_to_the_flow() -> None:
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "train", "BUDGET=12", "VENV=/nonexistent"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    line = next(x for x in dry.stdout.splitlines() if "flows.train_flow" in x)
    assert line.split("flows.train_flow", 1)[1].split() == ["--budget-minutes", "12"]
    plain = subprocess.run(
        ["make", "-n", "--no-print-directory", "train", "VENV=/nonexistent"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    line = next(x for x in plain.stdout.splitlines() if "flows.train_flow" in x)
    assert line.rstrip().endswith("flows.train_flow")
