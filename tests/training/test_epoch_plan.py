"""The time-fitted epoch plan against a clock the test sets: after each epoch the epoch count is
what fits in ``time_budget_minutes`` (minutes, not seconds) at the recent epochs' pace, never
fewer than the epochs done nor more than ``max_epochs``; training stops when the plan is met."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from src.training.module import LitClassifier
from tests.helpers.training import tiny_config


class Plan:
    """A real module on a real (unfitted) Trainer, its fit clock replaced by the test's."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, **train: Any) -> None:
        self.module = LitClassifier(tiny_config(root, **train).train)
        self.trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        self.module.trainer = self.trainer
        self.logged: dict[str, float] = {}
        monkeypatch.setattr(
            self.module, "log", lambda name, value, **_: self.logged.update({name: value})
        )
        self.now = 0.0
        monkeypatch.setattr(self.module, "elapsed_s", lambda: self.now)

    def epoch_ends_at(self, seconds: float) -> int:
        """End the next epoch at ``seconds`` of fit time; the planned epoch count after it."""
        self.now = seconds
        self.module.on_train_epoch_end()
        self.trainer.fit_loop.epoch_progress.current.completed += 1
        return self.module.planned_epochs


def test_the_plan_is_what_fits_in_the_budget_in_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = Plan(tmp_path, monkeypatch, max_epochs=40, time_budget_minutes=1.0)
    assert plan.epoch_ends_at(10.0) == 6  # 10 s per epoch: 5 more fit in the 60 s budget
    assert plan.logged["planned_epochs"] == 6.0
    assert plan.epoch_ends_at(20.0) == 6
    assert not plan.trainer.should_stop
    assert plan.epoch_ends_at(45.0) == 4  # the pace fell to 15 s/epoch (last 3): one more fits
    assert not plan.trainer.should_stop
    assert plan.epoch_ends_at(70.0) == 4  # past the budget: the plan is the epochs done
    assert plan.trainer.should_stop


def test_a_fast_machine_stops_at_max_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = Plan(tmp_path, monkeypatch, max_epochs=3, time_budget_minutes=10.0)
    assert [plan.epoch_ends_at(s) for s in (1.0, 2.0)] == [3, 3]
    assert not plan.trainer.should_stop
    assert plan.epoch_ends_at(3.0) == 3 and plan.trainer.should_stop


def test_without_a_budget_the_plan_is_max_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = Plan(tmp_path, monkeypatch, max_epochs=2, time_budget_minutes=None)
    assert plan.epoch_ends_at(1000.0) == 2 and not plan.trainer.should_stop
    assert "planned_epochs" not in plan.logged
    assert plan.epoch_ends_at(2000.0) == 2 and plan.trainer.should_stop


@pytest.mark.timeout(300)
def test_every_process_follows_rank_0_s_plan(tmp_path: Path) -> None:
    """Two real CPU processes (DDP on gloo) whose clocks disagree: rank 1's says the 30-minute
    budget is spent after the first epoch. Both follow rank 0's plan (3 epochs): processes that
    planned differently would stop at different epochs and hang the other one's all-reduce."""
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    from src.training.train import prepare_fit
    from tests.helpers.training import RankSkewedClock, synthetic_npz, tiny_prepared

    cfg = tiny_config(
        tmp_path, accelerator="cpu", devices=2, max_epochs=3, time_budget_minutes=30.0
    )
    setup = prepare_fit(tiny_prepared(synthetic_npz(tmp_path / "tiny.npz")), cfg)
    module = RankSkewedClock(setup.train_cfg)
    module.report_dir = str(tmp_path)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        # A generous collective timeout: a process left waiting fails the test, not the session.
        strategy=DDPStrategy(start_method="spawn", timeout=timedelta(seconds=90)),
        use_distributed_sampler=False,
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=setup.datamodule)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert reports == [{"planned_epochs": 3, "epochs_run": 3}] * 2
