"""Checkpoints written before ``train.mode`` was explicit still load: their settings say the
mode the old rule implied (a null time budget = reproducible)."""

from __future__ import annotations

from src.training.module import LitClassifier
from tests.helpers.config import train_config


def test_settings_without_a_mode_load_with_the_mode_they_implied() -> None:
    saved = train_config(widths=(8, 16, 32)).model_dump(mode="json")
    saved.pop("mode")
    assert LitClassifier(saved).cfg.mode == "time-fitted"
    reproducible = {**saved, "time_budget_minutes": None, "max_epochs": 2}
    assert LitClassifier(reproducible).cfg.mode == "reproducible"
