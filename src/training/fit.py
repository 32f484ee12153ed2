"""The Lightning fit: set-up (seed, data, measured hardware plan), the Trainer and its callbacks.

The budget (epoch plan, stop, stop reason) is :class:`src.training.budget.TrainingBudget`'s alone.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar, WeightAveraging
from lightning.pytorch.loggers import MLFlowLogger

from src.config import AppConfig
from src.config.train import TrainConfig
from src.data.split import PreparedData
from src.model import build_model
from src.training.budget import MONITOR, REPRODUCIBLE, TrainingBudget
from src.training.data import FashionDataModule
from src.training.ema import ema_update
from src.training.hardware import (
    HardwarePlan,
    budget_warning,
    epochs_that_fit,
    plan_hardware,
    resolve_strategy,
)
from src.training.module import LitClassifier

CHECKPOINT_METRIC = MONITOR  # what the best checkpoint and early stopping follow


@dataclass
class FitSetup:
    """Everything a fit needs, built before the MLflow run starts."""

    datamodule: FashionDataModule
    module: LitClassifier
    checkpoint_root: Path
    resume_from: str | None
    plan: HardwarePlan
    # cfg.train with the measured accelerator, precision, batch size and learning rate.
    train_cfg: TrainConfig
    budget_warning: str | None
    budget: TrainingBudget


@dataclass
class FitOutcome:
    trainer: L.Trainer
    checkpoint: ModelCheckpoint
    fit_seconds: float
    stop_reason: str
    # The budget's final state (plan, its reason, the stop): the callback's, or its checkpoint's.
    budget: dict[str, Any]


def prepare_fit(prepared: PreparedData, cfg: AppConfig) -> FitSetup:
    """Seed, build data and module, measure the hardware, set up the budget."""
    tcfg = cfg.train
    L.seed_everything(tcfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    # Augmentation lives in the LightningModule's on_after_batch_transfer on purpose.
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
    datamodule = FashionDataModule(
        Path(prepared.dataset_path),
        batch_size=tcfg.batch_size,
        eval_batch_size=tcfg.eval_batch_size,
        limit_train_samples=tcfg.limit_train_samples,
        limit_eval_samples=tcfg.limit_eval_samples,
        num_workers=tcfg.num_workers,
        seed=tcfg.seed,
    )
    datamodule.setup("fit")
    n_train = len(datamodule.datasets["train"])
    plan = plan_hardware(tcfg, lambda: _probe_model(tcfg), n_train)
    L.seed_everything(tcfg.seed, workers=True, verbose=False)  # the probe drew random numbers
    fitted = tcfg.model_copy(
        update={
            "accelerator": plan.accelerator,
            "precision": plan.precision,
            "batch_size": plan.batch_size,
            "learning_rate": plan.learning_rate,
        }
    )
    datamodule.batch_size = fitted.batch_size
    checkpoint_root = cfg.paths.resolve(tcfg.checkpoint_dir)
    estimate = epochs_that_fit(plan, tcfg, n_train)
    return FitSetup(
        datamodule=datamodule,
        module=LitClassifier(fitted),
        checkpoint_root=checkpoint_root,
        resume_from=_resolve_resume(cfg, checkpoint_root),
        plan=plan,
        train_cfg=fitted,
        budget_warning=budget_warning(plan, tcfg, n_train),
        budget=TrainingBudget(
            tcfg.mode,
            budget_minutes=tcfg.time_budget_minutes,
            max_epochs=tcfg.max_epochs,
            hard_limit_minutes=tcfg.max_time_minutes,
            patience=tcfg.early_stopping_patience,
            provisional_epochs=math.floor(estimate) if estimate else 1,
        ),
    )


def _probe_model(tcfg: TrainConfig) -> torch.nn.Module:
    model = build_model(tcfg)
    return model.to(memory_format=torch.channels_last) if tcfg.channels_last else model


def _resolve_resume(cfg: AppConfig, checkpoint_root: Path) -> str | None:
    resume = cfg.train.resume_from
    if not resume:
        return None
    if resume == "last":
        candidates = sorted(checkpoint_root.glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise FileNotFoundError(
                f"resume_from=last but no last.ckpt under {checkpoint_root}; unset TRAIN_RESUME_FROM."
            )
        return str(candidates[-1])
    path = cfg.paths.resolve(resume)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} not found; fix TRAIN_RESUME_FROM.")
    return str(path)


def fit_model(cfg: AppConfig, setup: FitSetup, run_id: str) -> FitOutcome:
    """Lightning fit with checkpoints and the budget callback; returns why it stopped."""
    tcfg = setup.train_cfg
    reproducible = tcfg.mode == REPRODUCIBLE
    checkpoint = ModelCheckpoint(
        dirpath=setup.checkpoint_root / run_id,
        filename="best",
        monitor=CHECKPOINT_METRIC,
        mode="max",
        save_last=True,
        save_top_k=1,
    )
    callbacks: list[L.Callback] = [setup.budget, checkpoint]
    if tcfg.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=20))
    if tcfg.ema_decay > 0:
        callbacks.append(WeightAveraging(multi_avg_fn=ema_update(tcfg.ema_decay)))
    trainer = L.Trainer(
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        strategy=resolve_strategy(tcfg, tcfg.accelerator),
        # The datamodule shards by itself (its batches are index lists, not samples).
        use_distributed_sampler=False,
        precision=tcfg.precision,
        # The budget callback stops the fit; Lightning's own limit is only the cap, if any.
        max_epochs=tcfg.max_epochs if tcfg.max_epochs is not None else -1,
        logger=MLFlowLogger(tracking_uri=cfg.tracking_uri, run_id=run_id),
        callbacks=callbacks,
        enable_progress_bar=tcfg.progress_bar,
        enable_model_summary=tcfg.progress_bar,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=tcfg.check_val_every_n_epoch,
        log_every_n_steps=max(
            1, min(50, len(setup.datamodule.datasets["train"]) // tcfg.batch_size // 4)
        ),
        # "warn": deterministic kernels where torch has them, a warning where it has none.
        deterministic="warn" if reproducible else False,
        default_root_dir=str(setup.checkpoint_root),
    )
    started = time.monotonic()
    trainer.fit(
        setup.module,
        datamodule=setup.datamodule,
        ckpt_path=setup.resume_from,
        # Tensors and plain containers only: a planted checkpoint cannot run code.
        weights_only=True,
    )
    seconds = time.monotonic() - started
    budget = setup.budget.state_dict()
    if not setup.module.history:
        # Spawned processes (ddp_spawn) trained copies: their bookkeeping comes back only
        # through the checkpoint they wrote.
        budget = restore_fit_state(setup.module, setup.checkpoint_root / run_id / "last.ckpt")
    return FitOutcome(trainer, checkpoint, seconds, str(budget.get("stop_reason", "")), budget)


def restore_fit_state(module: LitClassifier, last_checkpoint: Path) -> dict[str, Any]:
    """History and elapsed time from the run's own last checkpoint, into ``module``; returns the
    budget's state kept there (empty without a checkpoint)."""
    if not last_checkpoint.is_file():
        return {}
    state = torch.load(last_checkpoint, map_location="cpu", weights_only=True)
    module.on_load_checkpoint(state)
    module.fit_elapsed_s = module.elapsed_before_s
    budget = dict(state.get("callbacks", {}).get(TrainingBudget.__qualname__, {}))
    module.planned_epochs = int(budget.get("planned_epochs", module.planned_epochs))
    return budget
