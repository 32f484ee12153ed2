"""The reproducible mode picks ``precision: auto`` by what the device runs natively, never by a
timing: on a busy machine timings flip between runs, and the two runs must train alike."""

from __future__ import annotations

import pytest

from src.model import build_model
from src.training import hardware
from src.training.hardware import FP32, plan_hardware
from tests.helpers.config import train_config


def test_reproducible_auto_precision_is_not_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[str] = []
    monkeypatch.setattr(
        hardware, "time_training_steps", lambda m, p, b, s, d: timed.append(p) or 100.0
    )
    cfg = train_config(
        widths=(8,), blocks_per_stage=1, precision="auto", mode="reproducible", max_epochs=1
    )
    plan = plan_hardware(cfg, lambda: build_model(cfg), train_size=64)
    assert timed == []
    assert plan.precision == (hardware.native_low_precision("cpu") or FP32)
    assert plan.batch_size == cfg.batch_size and "not timed" in plan.reason
