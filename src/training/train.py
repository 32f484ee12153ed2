"""``train_model``: one training run: fit (src.training.fit, its budget src.training.budget),
evaluate the best weights as served, and log everything to MLflow."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from src.config import AppConfig
from src.data.split import PreparedData, load_split
from src.evaluate import EvalResult, evaluate_classifier
from src.labels import CLASS_NAMES
from src.model import describe_model
from src.model_io import LoadedClassifier, log_classifier
from src.preprocessing import normalize
from src.training.budget import REPRODUCIBLE, TIME_FITTED
from src.training.ema import ema_update
from src.training.fit import (
    CHECKPOINT_METRIC,
    FitOutcome,
    FitSetup,
    fit_model,
    prepare_fit,
    restore_fit_state,
)
from src.training.hardware import resolve_strategy
from src.training.module import LitClassifier
from src.training.provenance import cpu_model, git_commit, machine_params, training_mode
from src.training.report import plot_confusion_matrix, plot_learning_curves, plot_misclassified

# Moved by responsibility (ema, provenance, fit, budget); importable from here as before.
__all__ = [
    "REPRODUCIBLE",
    "TIME_FITTED",
    "FitOutcome",
    "FitSetup",
    "TrainResult",
    "cpu_model",
    "ema_update",
    "fit_model",
    "git_commit",
    "machine_params",
    "prepare_fit",
    "restore_fit_state",
    "train_model",
    "training_mode",
]

log = logging.getLogger(__name__)
# Receives the run's notable lines (level, message): the flow passes its Prefect logger.
Notify = Callable[[int, str], None]


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    test_predictions_path: Path
    best_checkpoint: Path | None = None  # the local checkpoint retraining can resume from


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
        say(
            logging.INFO,
            f"Epoch plan: {fit.budget.get('plan_reason', '')}; stopped: {fit.stop_reason}",
        )
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
        "planned_epochs": float(fit.budget.get("planned_epochs", module.planned_epochs)),
        "best_epoch": float(_best_epoch(module.history)),
        "train_images_per_s": images_seen / max(fit.fit_seconds, 1e-9),
    }
    step = fit.trainer.global_step + 1
    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()])
    client.set_tag(run_id, "stop_reason", fit.stop_reason)
    client.set_tag(run_id, "epoch_plan", str(fit.budget.get("plan_reason", "")))
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
