"""The one owner of the training budget: :class:`TrainingBudget`, a Lightning callback.

It decides the epoch plan (once, on rank 0, broadcast so every rank has the same), stops the fit
and says why, and is what the checkpoint keeps of the budget. Two modes (``train.mode``):

- ``time-fitted``: the plan is what fits in ``time_budget_minutes`` at the speed the first epoch
  measured on this machine (training and validation), so a faster machine trains longer; until it
  is measured, the learning-rate warmup follows the hardware probe's estimate. ``max_epochs``, if
  set, only caps the plan; ``max_time_minutes`` is a hard wall-clock cut.
- ``reproducible``: exactly ``max_epochs``, no clock involved.

Both stop early when ``val_macro_f1`` has not improved for ``early_stopping_patience`` epochs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

REPRODUCIBLE, TIME_FITTED = "reproducible", "time-fitted"
MONITOR = "val_macro_f1"  # what early stopping (and the best checkpoint) follow
# Training batches of the first epoch left out of its speed: the first ones pay for set-up.
WARMUP_BATCHES = 2


class TrainingBudget(L.Callback):
    """Epoch plan, stop and stop reason of one fit; its state travels in the checkpoint.

    ``elapsed`` is the fit time across resumed sessions (the module's clock, which the learning
    curves share). ``provisional_epochs`` is the plan before the first epoch is measured.
    """

    def __init__(
        self,
        mode: str,
        *,
        budget_minutes: float | None,
        max_epochs: int | None,
        hard_limit_minutes: float | None,
        patience: int,
        provisional_epochs: int = 1,
    ) -> None:
        if mode not in (REPRODUCIBLE, TIME_FITTED):
            raise ValueError(f"train.mode={mode!r}; use {TIME_FITTED} or {REPRODUCIBLE}.")
        if mode == TIME_FITTED and budget_minutes is None:
            raise ValueError(
                "mode time-fitted needs time_budget_minutes; set TRAIN_TIME_BUDGET_MINUTES."
            )
        if mode == REPRODUCIBLE and max_epochs is None:
            raise ValueError("mode reproducible needs max_epochs; set TRAIN_MAX_EPOCHS.")
        self.mode = mode
        self.budget_minutes = budget_minutes
        self.max_epochs = max_epochs
        self.hard_limit_minutes = hard_limit_minutes if mode == TIME_FITTED else None
        self.patience = patience
        if mode == REPRODUCIBLE:
            assert max_epochs is not None
            self.planned_epochs = max_epochs
            self.plan_reason = f"reproducible: max_epochs {max_epochs}, fixed"
        else:
            self.planned_epochs = self._capped(max(1, provisional_epochs))
            self.plan_reason = ""
        self.decided = mode == REPRODUCIBLE
        self.decided_for_minutes = budget_minutes
        self.stop_reason = ""
        self._restored_stop_reason = ""
        self.best: float | None = None
        self.epochs_without_gain = 0
        self._handled_epoch = -1
        self._epoch_started = 0.0
        self._warm_at: float | None = None
        self._validation_started: float | None = None

    # --- checkpoint -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "planned_epochs": self.planned_epochs,
            "plan_reason": self.plan_reason,
            "decided": self.decided,
            "decided_for_minutes": self.decided_for_minutes,
            "stop_reason": self.stop_reason,
            "best": self.best,
            "epochs_without_gain": self.epochs_without_gain,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        same_budget = (
            state_dict.get("mode") == self.mode
            and state_dict.get("decided_for_minutes") == self.budget_minutes
        )
        if same_budget and self.mode == TIME_FITTED:
            # Resumed with the budget it was planned for: the plan stands (decided once).
            self.planned_epochs = self._capped(int(state_dict["planned_epochs"]))
            self.plan_reason = str(state_dict.get("plan_reason", ""))
            self.decided = bool(state_dict.get("decided", False))
        # Otherwise the plan is decided again after the first resumed epoch, for the time now given.
        # A resumed fit with nothing left to train stops for the reason the checkpoint gives.
        self._restored_stop_reason = str(state_dict.get("stop_reason", ""))
        self.best = state_dict.get("best")
        self.epochs_without_gain = int(state_dict.get("epochs_without_gain", 0))

    # --- hooks ----------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop_reason = ""
        _set_plan(pl_module, self.planned_epochs)  # the learning-rate schedule follows it

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop_reason = self.stop_reason or self._restored_stop_reason

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = _elapsed(pl_module)
        self._warm_at = None
        self._validation_started = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if batch_idx == WARMUP_BATCHES - 1:
            self._warm_at = _elapsed(pl_module)
        if self.hard_limit_minutes is None:
            return
        # Every rank stops at the same batch: rank 0's clock decides.
        cut = _elapsed(pl_module) >= self.hard_limit_minutes * 60.0
        if trainer.strategy.broadcast(cut, src=0):
            done = trainer.current_epoch
            self._stop(trainer, f"wall-clock limit max_time_minutes {self.hard_limit_minutes:g} "
                       f"reached after {done} epochs")  # fmt: skip

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._validation_started = _elapsed(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Before ModelCheckpoint (Lightning runs it last), so the checkpoint has this epoch's plan.
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._epoch_done(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_done(trainer, pl_module)  # epochs without validation

    # --- decisions ------------------------------------------------------------------------------
    def _epoch_done(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handled_epoch == trainer.current_epoch:
            return
        self._handled_epoch = trainer.current_epoch
        done = trainer.current_epoch + 1
        if not self.decided:
            self._decide(trainer, pl_module, done)
        self._follow_patience(trainer, done)
        if done >= self.planned_epochs and not self.stop_reason:
            self._stop(trainer, self._plan_met_reason())

    def _decide(self, trainer: L.Trainer, pl_module: L.LightningModule, done: int) -> None:
        """The plan, from this epoch's measured cost: rank 0's, broadcast."""
        planned, reason = self.plan_from_epoch(
            done, _elapsed(pl_module), self._epoch_cost(trainer, pl_module)
        )
        planned, reason = trainer.strategy.broadcast((planned, reason), src=0)
        self.planned_epochs, self.plan_reason, self.decided = int(planned), str(reason), True
        self.decided_for_minutes = self.budget_minutes
        _set_plan(pl_module, self.planned_epochs)
        if trainer.is_global_zero:
            log.info("Epoch plan: %s", self.plan_reason)

    def plan_from_epoch(
        self, done: int, elapsed_s: float, cost: tuple[float, float]
    ) -> tuple[int, str]:
        """Epochs that fill the budget at ``cost`` = (training s, validation s) per epoch."""
        assert self.budget_minutes is not None
        train_s, val_s = cost
        epoch_s = max(train_s + val_s, 1e-6)
        left_s = self.budget_minutes * 60.0 - elapsed_s
        fits = done + max(0, math.floor(left_s / epoch_s))
        planned = self._capped(max(done, fits))
        reason = (
            f"an epoch costs {epoch_s:.1f} s here ({train_s:.1f} s training, {val_s:.1f} s "
            f"validation; measured in epoch {done}): {fits} epochs fill the "
            f"{self.budget_minutes:g}-minute budget"
        )
        if planned < fits:
            reason += f", capped at max_epochs {planned}"
        return planned, reason

    def _epoch_cost(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, float]:
        now = _elapsed(pl_module)
        val_start = self._validation_started if self._validation_started is not None else now
        val_s = now - val_start
        batches = trainer.num_training_batches
        if self._warm_at is not None and isinstance(batches, int) and batches > WARMUP_BATCHES:
            per_batch = (val_start - self._warm_at) / (batches - WARMUP_BATCHES)
            return per_batch * batches, val_s
        return val_start - self._epoch_started, val_s

    def _follow_patience(self, trainer: L.Trainer, done: int) -> None:
        value = trainer.callback_metrics.get(MONITOR)
        if value is None:
            return
        score = float(value)
        if self.best is None or score > self.best:
            self.best, self.epochs_without_gain = score, 0
            return
        self.epochs_without_gain += 1
        stop = trainer.strategy.broadcast(self.epochs_without_gain >= self.patience, src=0)
        if stop:
            self._stop(trainer, f"early stopping: no {MONITOR} gain in {self.patience} epochs")

    def _plan_met_reason(self) -> str:
        if self.mode == REPRODUCIBLE:
            return f"max_epochs {self.planned_epochs} reached"
        if self.max_epochs is not None and self.planned_epochs >= self.max_epochs:
            return f"max_epochs {self.max_epochs} reached (the cap; the budget had room for more)"
        return f"time budget: the {self.planned_epochs} planned epochs done"

    def _stop(self, trainer: L.Trainer, reason: str) -> None:
        trainer.should_stop = True
        if not self.stop_reason:
            self.stop_reason = reason

    def _capped(self, epochs: int) -> int:
        return epochs if self.max_epochs is None else min(epochs, self.max_epochs)


def _elapsed(pl_module: L.LightningModule) -> float:
    return float(pl_module.elapsed_s())  # LitClassifier's fit clock


def _set_plan(pl_module: L.LightningModule, epochs: int) -> None:
    # LitClassifier.planned_epochs drives its learning-rate schedule.
    pl_module.planned_epochs = epochs
