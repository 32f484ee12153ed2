"""The budget's one owner, :class:`TrainingBudget`, against a clock the test sets: the time-fitted
plan is what fills ``time_budget_minutes`` (minutes, not seconds) at the cost the first epoch
measured, decided once (rank 0's, broadcast), capped only by an explicit ``max_epochs``; the
callback stops the fit, says why, and keeps its plan in the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest

from src.training.budget import REPRODUCIBLE, TIME_FITTED, TrainingBudget
from src.training.module import LitClassifier
from tests.helpers.training import tiny_config


class Fit:
    """A real module on a real (unfitted) Trainer, its fit clock replaced by the test's."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, budget: TrainingBudget) -> None:
        self.module = LitClassifier(tiny_config(root).train)
        self.trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        self.module.trainer = self.trainer
        self.trainer.fit_loop.max_batches = 10  # trainer.num_training_batches
        self.budget = budget
        self.now = 0.0
        monkeypatch.setattr(self.module, "elapsed_s", lambda: self.now)
        budget.on_fit_start(self.trainer, self.module)

    def epoch(self, train_s: float, val_s: float = 0.0, batches: int = 10) -> int:
        """One epoch of ``batches`` equal training batches and a validation pass; the plan after."""
        self.budget.on_train_epoch_start(self.trainer, self.module)
        for index in range(batches):
            self.now += train_s / batches
            self.budget.on_train_batch_end(self.trainer, self.module, None, None, index)
        self.now += val_s
        self.budget.on_train_epoch_end(self.trainer, self.module)
        self.trainer.fit_loop.epoch_progress.current.completed += 1
        return self.budget.planned_epochs


def time_fitted(minutes: float, max_epochs: int | None = None, **kw: Any) -> TrainingBudget:
    settings: dict[str, Any] = {"hard_limit_minutes": None, "patience": 100, **kw}
    return TrainingBudget(TIME_FITTED, budget_minutes=minutes, max_epochs=max_epochs, **settings)


def test_the_plan_fills_the_budget_at_the_measured_cost() -> None:
    budget = time_fitted(1.0)
    planned, reason = budget.plan_from_epoch(1, 10.0, (9.0, 1.0))
    assert planned == 6  # 10 s per epoch: 5 more fit in the 60 s budget (minutes, not seconds)
    assert "6 epochs fill the 1-minute budget" in reason and "9.0 s training" in reason


def test_a_faster_machine_trains_longer_without_a_cap() -> None:
    slow = time_fitted(27.0).plan_from_epoch(1, 40.0, (36.0, 4.0))[0]
    fast = time_fitted(27.0).plan_from_epoch(1, 11.0, (10.0, 1.0))[0]
    assert slow == 1 + (27 * 60 - 40) // 40 == 40
    assert fast == 1 + (27 * 60 - 11) // 11 == 147  # no max_epochs tuned to another CPU


def test_an_explicit_max_epochs_caps_the_plan_and_says_so() -> None:
    planned, reason = time_fitted(27.0, max_epochs=3).plan_from_epoch(1, 11.0, (10.0, 1.0))
    assert planned == 3 and "capped at max_epochs 3" in reason


def test_the_plan_is_decided_once_and_the_fit_stops_when_it_is_met(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit = Fit(tmp_path, monkeypatch, time_fitted(1.0, provisional_epochs=30))
    assert fit.module.planned_epochs == 30  # the probe's estimate until an epoch is measured
    # The first two batches pay for set-up and are left out of the measured cost.
    fit.budget.on_train_epoch_start(fit.trainer, fit.module)
    for index, seconds in enumerate([4.0, 4.0] + [1.0] * 8):
        fit.now += seconds
        fit.budget.on_train_batch_end(fit.trainer, fit.module, None, None, index)
    fit.budget.on_train_epoch_end(fit.trainer, fit.module)
    fit.trainer.fit_loop.epoch_progress.current.completed += 1
    # 10 s per epoch (10 batches at 1 s) and 16 s spent: 4 more fit in the 60 s budget.
    assert fit.budget.planned_epochs == fit.module.planned_epochs == 5
    assert fit.epoch(30.0) == 5  # a slower epoch does not re-plan: decided once
    assert not fit.trainer.should_stop
    assert [fit.epoch(1.0) for _ in range(3)] == [5, 5, 5]
    assert fit.trainer.should_stop
    assert fit.budget.stop_reason == "time budget: the 5 planned epochs done"


def test_every_rank_takes_rank_zeros_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fit = Fit(tmp_path, monkeypatch, time_fitted(1.0))
    sent: list[Any] = []

    def broadcast(obj: Any, src: int = 0) -> Any:
        sent.append((obj, src))
        # This rank measured its own cost; rank 0's plan is what comes back.
        return (9, "rank 0's plan") if isinstance(obj, tuple) else obj

    monkeypatch.setattr(fit.trainer.strategy, "broadcast", broadcast)
    assert fit.epoch(10.0) == 9
    assert fit.module.planned_epochs == 9 and fit.budget.plan_reason == "rank 0's plan"
    assert ((6, sent[0][0][1]), 0) == sent[0]  # what this rank would have planned alone


def test_the_checkpoint_keeps_the_plan_for_the_same_budget_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit = Fit(tmp_path, monkeypatch, time_fitted(1.0))
    fit.epoch(10.0)
    state = fit.budget.state_dict()
    same = time_fitted(1.0)
    same.load_state_dict(state)
    assert same.decided and same.planned_epochs == 6 and same.plan_reason == state["plan_reason"]
    longer = time_fitted(5.0)
    longer.load_state_dict(state)
    assert not longer.decided  # the time now given is planned again after the next epoch


def test_the_hard_cut_stops_mid_epoch_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit = Fit(tmp_path, monkeypatch, time_fitted(1.0, hard_limit_minutes=0.5))
    fit.now = 29.0
    fit.budget.on_train_batch_end(fit.trainer, fit.module, None, None, 5)
    assert not fit.trainer.should_stop
    fit.now = 30.0
    fit.budget.on_train_batch_end(fit.trainer, fit.module, None, None, 6)
    assert fit.trainer.should_stop
    assert fit.budget.stop_reason.startswith("wall-clock limit max_time_minutes 0.5 reached")


def test_reproducible_mode_runs_max_epochs_whatever_the_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = TrainingBudget(
        REPRODUCIBLE, budget_minutes=0.001, max_epochs=2, hard_limit_minutes=0.001, patience=100
    )
    fit = Fit(tmp_path, monkeypatch, budget)
    assert fit.epoch(1000.0) == 2 and not fit.trainer.should_stop
    assert fit.epoch(1000.0) == 2 and fit.trainer.should_stop
    assert budget.stop_reason == "max_epochs 2 reached"


def test_patience_stops_the_fit_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = TrainingBudget(
        REPRODUCIBLE, budget_minutes=None, max_epochs=10, hard_limit_minutes=None, patience=2
    )
    fit = Fit(tmp_path, monkeypatch, budget)
    for score in (0.5, 0.6, 0.6, 0.55):
        fit.trainer.callback_metrics["val_macro_f1"] = score  # type: ignore[index]
        fit.epoch(1.0)
    assert fit.trainer.should_stop
    assert budget.stop_reason == "early stopping: no val_macro_f1 gain in 2 epochs"


def test_a_mode_without_its_limit_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="TRAIN_TIME_BUDGET_MINUTES"):
        TrainingBudget(
            TIME_FITTED, budget_minutes=None, max_epochs=None, hard_limit_minutes=None, patience=1
        )
