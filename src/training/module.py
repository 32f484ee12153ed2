"""The LightningModule: ResNet, batched augmentation, label-smoothed loss, torchmetrics, schedule."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from src.config.train import TrainConfig
from src.labels import NUM_CLASSES
from src.model import build_model
from src.training.augment import augment_batch


def warmup_cosine(progress: float, warmup_fraction: float, floor: float = 1e-3) -> float:
    """LR multiplier at ``progress`` in [0, 1]: linear warmup from 4% then cosine decay to ``floor``."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return 0.04 + 0.96 * progress / warmup_fraction
    decay = (progress - warmup_fraction) / (1.0 - warmup_fraction)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * decay))


def _with_mode(train_cfg: dict[str, Any]) -> dict[str, Any]:
    """Settings saved before ``mode`` was explicit: a null budget meant the reproducible mode."""
    if "mode" in train_cfg:
        return train_cfg
    budget = train_cfg.get("time_budget_minutes")
    return {**train_cfg, "mode": "reproducible" if budget is None else "time-fitted"}


class LitClassifier(L.LightningModule):
    """The Lightning module that trains ``build_model(cfg)``; validation/test metrics are accuracy
    and macro-F1. The trained model, logged and loaded back, is :class:`src.model_io.LoadedClassifier`."""

    def __init__(self, train_cfg: dict[str, Any] | TrainConfig) -> None:
        super().__init__()
        cfg = (
            train_cfg
            if isinstance(train_cfg, TrainConfig)
            else TrainConfig.model_validate(_with_mode(train_cfg))
        )
        self.cfg = cfg
        self.save_hyperparameters({"train_cfg": cfg.model_dump(mode="json")}, logger=False)
        self.model = build_model(cfg)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        metrics: dict[str, Any] = {}
        for split in ("val", "test"):
            metrics[f"{split}_accuracy"] = MulticlassAccuracy(NUM_CLASSES, average="micro")
            metrics[f"{split}_macro_f1"] = MulticlassF1Score(NUM_CLASSES, average="macro")
        self.metrics = torch.nn.ModuleDict(metrics)
        # Epoch-level history for the learning-curve figure; plain Python, kept in checkpoints.
        self.history: list[dict[str, float]] = []
        # The epoch plan the learning-rate schedule anneals over: set by the fit's
        # src.training.budget.TrainingBudget, which owns it.
        self.planned_epochs = cfg.max_epochs or 1
        self.elapsed_before_s = 0.0
        self.fit_elapsed_s = 0.0
        self._fit_started = time.monotonic()
        self._train_loss_sum = torch.zeros(())
        self._train_batches = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    # --- data on the device -------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        if self.trainer.training:
            images = augment_batch(
                images,
                crop_padding=self.cfg.crop_padding,
                hflip=self.cfg.hflip,
                erasing_p=self.cfg.random_erasing_p,
            )
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    # --- steps --------------------------------------------------------------------------------
    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels, label_smoothing=self.cfg.label_smoothing)
        self._train_loss_sum = self._train_loss_sum.to(loss.device) + loss.detach().float()
        self._train_batches += 1
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _eval_step(self, split: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        images, labels = batch
        logits = self(images).float()
        loss = F.cross_entropy(logits, labels)
        predictions = logits.argmax(dim=1)
        for name in ("accuracy", "macro_f1"):
            metric = self.metrics[f"{split}_{name}"]
            assert isinstance(metric, Metric)
            metric.update(predictions, labels)
            self.log(f"{split}_{name}", metric, on_epoch=True, prog_bar=True)
        self.log(f"{split}_loss", loss, on_epoch=True, prog_bar=split == "val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    # --- epoch bookkeeping --------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()
        init = getattr(self.model, "init_from_data", None)
        if init is not None and self.trainer.ckpt_path is None:
            # Data-dependent stem (patch whitening): from the first training images, once.
            images = self.trainer.datamodule.datasets["train"].images[:5000]
            init(images.to(self.device))

    def on_fit_end(self) -> None:
        self.fit_elapsed_s = self.elapsed_s()

    def elapsed_s(self) -> float:
        """Seconds spent in fit (validation included), across resumed sessions."""
        return self.elapsed_before_s + time.monotonic() - self._fit_started

    def on_train_epoch_start(self) -> None:
        self._train_loss_sum = torch.zeros((), device=self.device)
        self._train_batches = 0

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        metrics = self.trainer.callback_metrics
        row = {"epoch": float(self.current_epoch + 1), "elapsed_s": self.elapsed_s()}
        if self._train_batches:
            row["train_loss"] = float(self._train_loss_sum) / self._train_batches
        for key in ("val_loss", "val_accuracy", "val_macro_f1"):
            if key in metrics:
                row[key] = float(metrics[key])
        row["lr"] = float(self.optimizers().param_groups[0]["lr"])
        self.history.append(row)
        self.log("train_loss_epoch", row.get("train_loss", float("nan")))
        self.log("elapsed_minutes", row["elapsed_s"] / 60.0)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fashion_state"] = {
            "history": self.history,
            "elapsed_s": self.elapsed_s(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("fashion_state", {})
        self.history = list(state.get("history", []))
        self.elapsed_before_s = float(state.get("elapsed_s", 0.0))

    # --- optimisation -------------------------------------------------------------------------
    def _progress(self) -> float:
        steps_per_epoch = max(1, self.trainer.num_training_batches)
        return self.trainer.global_step / (steps_per_epoch * max(1, self.planned_epochs))

    def configure_optimizers(self) -> Any:
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                (no_decay if parameter.ndim <= 1 else decay).append(parameter)
        lr = self.cfg.learning_rate
        groups = [
            {"params": decay, "weight_decay": self.cfg.weight_decay, "lr": lr},
            # Norm scales/shifts and biases: no decay, and their own lr (airbench's BN-bias lr).
            {"params": no_decay, "weight_decay": 0.0, "lr": lr * self.cfg.norm_lr_scale},
        ]
        optimizer: torch.optim.Optimizer
        if self.cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=self.cfg.momentum, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr)
        warmup = self.cfg.warmup_fraction
        if self.cfg.schedule == "onecycle":
            # OneCycle shape (short warmup, cosine anneal), driven by progress through the epoch
            # budget so that a time-fitted budget still ends at the low learning rate.
            def factor(_: int) -> float:
                return warmup_cosine(self._progress(), warmup, floor=1e-3)
        else:

            def factor(_: int) -> float:
                return warmup_cosine(self._progress(), min(warmup, 0.05), floor=0.0)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
