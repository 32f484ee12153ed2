"""``train_model``: fit the Lightning ResNet on the prepared split and log everything to MLflow."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    ModelCheckpoint,
    Timer,
    TQDMProgressBar,
    WeightAveraging,
)
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from torch import Tensor

from src.config import AppConfig
from src.config.train import TrainConfig
from src.data.split import PreparedData, load_split
from src.evaluate import EvalResult, evaluate_classifier
from src.labels import CLASS_NAMES
from src.model import build_model, describe_model
from src.model_io import LoadedClassifier, log_classifier
from src.preprocessing import normalize
from src.training.data import FashionDataModule
from src.training.hardware import HardwarePlan, budget_warning, plan_hardware, resolve_strategy
from src.training.module import LitClassifier
from src.training.report import plot_confusion_matrix, plot_learning_curves, plot_misclassified

log = logging.getLogger(__name__)
CHECKPOINT_METRIC = "val_macro_f1"  # what the best checkpoint and early stopping follow
# Receives the run's notable lines (level, message): the flow passes its Prefect logger.
Notify = Callable[[int, str], None]


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    test_predictions_path: Path
    best_checkpoint: Path | None = None  # the local checkpoint retraining can resume from


def ema_update(
    decay: float,
) -> Callable[[Sequence[Tensor], Sequence[Tensor], Tensor | int], None]:
    """EMA for ``AveragedModel`` with the usual warmup: decay min(decay, (1+n)/(10+n)) at update n.

    Without the warmup the average is dominated by the random initial weights for the first
    thousands of steps (and forever in a short run).
    """

    @torch.no_grad()
    def update(
        averaged: Sequence[Tensor], current: Sequence[Tensor], num_averaged: Tensor | int
    ) -> None:
        n = float(num_averaged)
        effective = min(decay, (1.0 + n) / (10.0 + n))
        floating = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floating:
            avg, cur = zip(*floating, strict=True)
            torch._foreach_lerp_(list(avg), list(cur), 1.0 - effective)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():
                a.copy_(c)

    return update


def git_commit(root: Path) -> str:
    """The checked-out commit (``+dirty`` when tracked files changed), or ``unknown`` without git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def ensure_experiment(client: MlflowClient, cfg: AppConfig) -> str:
    """The id of ``cfg.mlflow.experiment_name`` (created with its artifact location if new)."""
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(
            client.create_experiment(
                cfg.mlflow.experiment_name,
                artifact_location=cfg.mlflow.resolved_artifact_location(cfg.paths.root),
            )
        )
    except MlflowException:  # created meanwhile by a concurrent run
        experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


REPRODUCIBLE, TIME_FITTED = "reproducible", "time-fitted"


def training_mode(tcfg: TrainConfig) -> str:
    """``reproducible`` without a time budget (fixed schedule, no wall-clock cut, deterministic
    algorithms), else ``time-fitted`` (epochs fitted to the budget, capped at max_epochs)."""
    return REPRODUCIBLE if tcfg.time_budget_minutes is None else TIME_FITTED


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_params(tcfg: TrainConfig) -> dict[str, Any]:
    """What the run's speed and numbers depend on besides the code and the data."""
    cuda = torch.cuda.is_available() and tcfg.accelerator in ("auto", "gpu", "cuda")
    return {
        "machine_cpu_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "machine_cpu": cpu_model(),
        "machine_cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "training_mode": training_mode(tcfg),
        "deterministic": training_mode(tcfg) == REPRODUCIBLE,
        "wall_clock_cut_minutes": (
            tcfg.max_time_minutes if training_mode(tcfg) == TIME_FITTED else None
        ),
    }


def stop_reason(
    trainer: L.Trainer, module: LitClassifier, early: EarlyStopping, max_epochs: int
) -> str:
    """Why fit ended, in words (logged as the run's ``stop_reason`` tag)."""
    done = int(module.history[-1]["epoch"]) if module.history else trainer.current_epoch
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if early.stopped_epoch > 0:
        return f"early stopping: no val_macro_f1 gain in {early.patience} epochs"
    if remaining is not None and remaining <= 0:
        return f"wall-clock limit max_time_minutes reached after {done} epochs"
    if done < max_epochs and done >= module.planned_epochs:
        return f"time budget: {module.planned_epochs} of max_epochs {max_epochs} fit"
    if done >= max_epochs:
        return f"max_epochs {max_epochs} reached"
    return f"stopped after {done} epochs"


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


def _params(cfg: AppConfig, prepared: PreparedData, model: torch.nn.Module) -> dict[str, Any]:
    params: dict[str, Any] = {k: v for k, v in cfg.train.model_dump(mode="json").items()}
    params.update(
        **describe_model(model, cfg.train),
        data_md5=prepared.data_md5,
        split_hash=prepared.split_hash,
        profile=cfg.profile,
        torch_version=torch.__version__,
        lightning_version=L.__version__,
    )
    return {k: ("None" if v is None else v) for k, v in params.items()}


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


@dataclass
class FitOutcome:
    trainer: L.Trainer
    checkpoint: ModelCheckpoint
    fit_seconds: float
    stop_reason: str


def train_model(
    prepared: PreparedData,
    cfg: AppConfig,
    client: MlflowClient | None = None,
    notify: Notify | None = None,
) -> TrainResult:
    """Train ``cfg.train`` on ``prepared.dataset_path``; log run, metrics, figures and the model
    (MLflow's onnx flavour: the ONNX graph the API serves).

    Does not register the model. Returns the run id, the model URI, the final metrics (of the
    best-by-validation-macro-F1 weights, fp32, evaluated as served) and the test predictions file.
    ``client`` (default: one for ``cfg.tracking_uri``) receives everything; no global MLflow
    setting is changed. ``notify`` (default: this module's logger) gets the hardware choice and
    any budget warning before training starts.
    """
    client = client or MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    say = notify or log.log
    setup = prepare_fit(prepared, cfg)
    say(logging.INFO, f"Training on {setup.plan.accelerator}: {setup.plan.reason}")
    if setup.budget_warning:
        say(logging.WARNING, setup.budget_warning)
    run_id = start_run(client, cfg, prepared, setup)
    try:
        fit = fit_model(cfg, setup, run_id)
        model, results, metrics = evaluate_best(client, run_id, prepared, setup, fit)
        predictions_path = log_evaluation(client, run_id, cfg, prepared, setup.module, results)
        model_uri = log_model(client, run_id, cfg, prepared, model, results["test"])
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return TrainResult(
        run_id=run_id,
        model_uri=model_uri,
        metrics=metrics,
        test_predictions_path=predictions_path,
        best_checkpoint=_best_path(fit.checkpoint),
    )


def prepare_fit(prepared: PreparedData, cfg: AppConfig) -> FitSetup:
    """Seed, pick deterministic algorithms in the reproducible mode, build data and module."""
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
    return FitSetup(
        datamodule=datamodule,
        module=LitClassifier(fitted),
        checkpoint_root=checkpoint_root,
        resume_from=_resolve_resume(cfg, checkpoint_root),
        plan=plan,
        train_cfg=fitted,
        budget_warning=budget_warning(plan, tcfg, n_train),
    )


def _probe_model(tcfg: TrainConfig) -> torch.nn.Module:
    model = build_model(tcfg)
    return model.to(memory_format=torch.channels_last) if tcfg.channels_last else model


def start_run(client: MlflowClient, cfg: AppConfig, prepared: PreparedData, setup: FitSetup) -> str:
    """Create the MLflow run with its tags and parameters (the machine included)."""
    experiment_id = ensure_experiment(client, cfg)
    tags = {
        "git_commit": git_commit(cfg.paths.root),
        "data_md5": prepared.data_md5,
        "split_hash": prepared.split_hash,
        "dataset_path": str(prepared.dataset_path),
        "profile": cfg.profile,
        "training_mode": training_mode(cfg.train),
        "resumed_from": setup.resume_from or "",
        "budget_warning": setup.budget_warning or "",
        "mlflow.note.content": "Lightning ResNet on Fashion-MNIST; see the project README.",
    }
    run_id = str(client.create_run(experiment_id, tags=tags).info.run_id)
    params = {
        **_params(cfg, prepared, setup.module.model),
        **machine_params(cfg.train),
        **setup.plan.params(),
        "resolved_strategy": resolve_strategy(setup.train_cfg, setup.plan.accelerator),
        "training_processes": setup.train_cfg.devices,
        **{f"n_{s}": len(setup.datamodule.datasets[s]) for s in ("train", "val", "test")},
    }
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run_id


def fit_model(cfg: AppConfig, setup: FitSetup, run_id: str) -> FitOutcome:
    """Lightning fit with checkpoints, early stopping and, in the time-fitted mode only, the
    wall-clock cut; returns why it stopped."""
    tcfg = setup.train_cfg
    reproducible = training_mode(tcfg) == REPRODUCIBLE
    checkpoint = ModelCheckpoint(
        dirpath=setup.checkpoint_root / run_id,
        filename="best",
        monitor=CHECKPOINT_METRIC,
        mode="max",
        save_last=True,
        save_top_k=1,
    )
    early = EarlyStopping(
        monitor=CHECKPOINT_METRIC, mode="max", patience=tcfg.early_stopping_patience
    )
    callbacks: list[L.Callback] = [checkpoint, early]
    if tcfg.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=20))
    if tcfg.ema_decay > 0:
        callbacks.append(WeightAveraging(multi_avg_fn=ema_update(tcfg.ema_decay)))
    max_time = None
    if tcfg.max_time_minutes and not reproducible:
        max_time = timedelta(minutes=tcfg.max_time_minutes)
    trainer = L.Trainer(
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        strategy=resolve_strategy(tcfg, tcfg.accelerator),
        # The datamodule shards by itself (its batches are index lists, not samples).
        use_distributed_sampler=False,
        precision=tcfg.precision,
        max_epochs=tcfg.max_epochs,
        max_time=max_time,
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
    if not setup.module.history:
        # Spawned processes (ddp_spawn) trained copies: their bookkeeping comes back only
        # through the checkpoint they wrote.
        restore_fit_state(setup.module, setup.checkpoint_root / run_id / "last.ckpt")
    reason = stop_reason(trainer, setup.module, early, tcfg.max_epochs)
    return FitOutcome(trainer, checkpoint, seconds, reason)


def restore_fit_state(module: LitClassifier, last_checkpoint: Path) -> None:
    """History, epoch plan and elapsed time from the run's own last checkpoint, into ``module``."""
    if not last_checkpoint.is_file():
        return
    state = torch.load(last_checkpoint, map_location="cpu", weights_only=True)
    module.on_load_checkpoint(state)
    module.fit_elapsed_s = module.elapsed_before_s


def evaluate_best(
    client: MlflowClient,
    run_id: str,
    prepared: PreparedData,
    setup: FitSetup,
    fit: FitOutcome,
) -> tuple[torch.nn.Module, dict[str, EvalResult], dict[str, float]]:
    """Reload the best checkpoint, score it as served on val and test, log the metrics."""
    module = setup.module
    best_path = _best_path(fit.checkpoint)
    if best_path is not None:
        best = torch.load(best_path, map_location="cpu", weights_only=True)
        module.load_state_dict(best["state_dict"])
    model = module.model.to("cpu").float().to(memory_format=torch.contiguous_format).eval()
    classifier = LoadedClassifier(module=model, class_names=list(CLASS_NAMES))
    results = {
        split: evaluate_classifier(classifier, Path(prepared.dataset_path), split=split)
        for split in ("val", "test")
    }
    epochs_done = int(module.history[-1]["epoch"]) if module.history else 0
    images_seen = epochs_done * len(setup.datamodule.datasets["train"])
    metrics: dict[str, float] = {
        **results["val"].metrics(),
        **results["test"].metrics(),
        "train_minutes": fit.fit_seconds / 60.0,
        # Fit time across resumed sessions (equals train_minutes without a resume).
        "training_total_minutes": module.fit_elapsed_s / 60.0,
        "epochs_completed": float(epochs_done),
        "planned_epochs": float(module.planned_epochs),
        "best_epoch": float(_best_epoch(module.history)),
        "train_images_per_s": images_seen / max(fit.fit_seconds, 1e-9),
    }
    step = fit.trainer.global_step + 1
    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()])
    client.set_tag(run_id, "stop_reason", fit.stop_reason)
    return model, results, metrics


def log_evaluation(
    client: MlflowClient,
    run_id: str,
    cfg: AppConfig,
    prepared: PreparedData,
    module: LitClassifier,
    results: dict[str, EvalResult],
) -> Path:
    """Figures, the evaluation table, the history and the test predictions, into the run."""
    out_dir = Path(tempfile.mkdtemp(prefix="train-artifacts-"))
    x_test, y_test = load_split(Path(prepared.dataset_path), "test")
    test = results["test"]
    figures = [
        plot_confusion_matrix(test.confusion, CLASS_NAMES, out_dir / "confusion_matrix.png"),
        plot_learning_curves(module.history, out_dir / "learning_curves.png"),
        plot_misclassified(
            x_test,
            y_test,
            test.predictions,
            test.probabilities,
            CLASS_NAMES,
            out_dir / "misclassified_test.png",
        ),
    ]
    for figure in figures:
        client.log_artifact(run_id, str(figure), artifact_path="figures")
    client.log_text(run_id, results["val"].table() + "\n\n" + test.table(), "evaluation.txt")
    client.log_dict(run_id, {"history": module.history}, "history.json")
    predictions_dir = cfg.paths.outputs / "predictions"
    predictions_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = predictions_dir / f"{run_id}_test_predictions.npy"
    np.save(predictions_path, test.predictions)
    client.log_artifact(run_id, str(predictions_path), artifact_path="predictions")
    return predictions_path


def log_model(
    client: MlflowClient,
    run_id: str,
    cfg: AppConfig,
    prepared: PreparedData,
    model: torch.nn.Module,
    test: EvalResult,
) -> str:
    """The model as the ONNX graph the API serves (onnx flavour, with class names, preprocessing
    and signature in its MLmodel), into the run; returns its ``models:/m-...`` URI. An export
    that fails fails the run: a model that cannot be served is never registered."""
    x_test, _ = load_split(Path(prepared.dataset_path), "test")
    metadata = {
        "network": cfg.train.network,
        "widths": list(cfg.train.widths),
        "translate_tta": cfg.train.translate_tta,
        "flip_tta": cfg.train.flip_tta,
        "test_accuracy": test.accuracy,
        "test_macro_f1": test.macro_f1,
        "data_md5": prepared.data_md5,
        "split_hash": prepared.split_hash,
    }
    # MLflow's model logging only knows the fluent API: point it at this run, then restore.
    with _fluent_run(cfg.tracking_uri, run_id):
        info = log_classifier(model, input_example=normalize(x_test[:2]).numpy(), metadata=metadata)
    return str(info.model_uri)


@contextmanager
def _fluent_run(tracking_uri: str, run_id: str) -> Iterator[None]:
    # MLflow's own scoped switch: the previous tracking URI (even "unset") comes back after.
    with _use_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id, log_system_metrics=False):
        yield


def _best_path(checkpoint: ModelCheckpoint) -> Path | None:
    path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    return path if path is not None and path.is_file() else None


def _best_epoch(history: list[dict[str, float]]) -> int:
    scored = [row for row in history if CHECKPOINT_METRIC in row]
    if not scored:
        return 0
    return int(max(scored, key=lambda row: row[CHECKPOINT_METRIC])["epoch"])
