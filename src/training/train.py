"""``train_model``: fit the Lightning ResNet on the prepared split and log everything to MLflow."""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import mlflow
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    ModelCheckpoint,
    TQDMProgressBar,
    WeightAveraging,
)
from lightning.pytorch.loggers import MLFlowLogger
from torch import Tensor

from src.config import AppConfig
from src.evaluate import EvalResult, evaluate_classifier
from src.labels import CLASS_NAMES, IMAGE_SIZE
from src.model_io import Classifier, log_classifier
from src.preprocessing import normalize
from src.training.data import FashionDataModule, load_split
from src.training.module import FashionClassifier
from src.training.report import plot_confusion_matrix, plot_learning_curves, plot_misclassified

log = logging.getLogger(__name__)
MONITOR = "val_macro_f1"


class PreparedLike(Protocol):
    dataset_path: Path
    data_md5: str
    split_hash: str


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    test_predictions_path: Path
    best_checkpoint: Path | None = None
    onnx_path: Path | None = None


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


def ensure_experiment(cfg: AppConfig) -> str:
    """Point MLflow at ``cfg.tracking_uri`` and return the experiment id (created with local artifacts)."""
    mlflow.set_tracking_uri(cfg.tracking_uri)
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(
        cfg.mlflow.experiment_name,
        artifact_location=cfg.mlflow.resolved_artifact_location(cfg.paths.root),
    )


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


def _params(cfg: AppConfig, prepared: PreparedLike, model: torch.nn.Module) -> dict[str, Any]:
    params: dict[str, Any] = {k: v for k, v in cfg.train.model_dump(mode="json").items()}
    widths, blocks = cfg.train.resolved_shape()
    params.update(
        widths="-".join(str(w) for w in widths),
        blocks_per_stage=blocks,
        num_parameters=sum(p.numel() for p in model.parameters()),
        data_md5=getattr(prepared, "data_md5", ""),
        split_hash=getattr(prepared, "split_hash", ""),
        profile=cfg.profile,
        torch_version=torch.__version__,
        lightning_version=L.__version__,
    )
    return {k: ("None" if v is None else v) for k, v in params.items()}


def export_onnx(model: torch.nn.Module, path: Path) -> Path:
    """Export ``model`` (fp32, eval) to ONNX with a dynamic batch dimension (input ``images``).

    The TorchScript-based exporter takes under a second for this net; the torch.export-based one
    (the default since torch 2.9) takes ~30 s on this CPU, so it is only the fallback.
    """
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    names = {"input_names": ["images"], "output_names": ["logits"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
                **names,  # type: ignore[arg-type]
            )
        except Exception:
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamic_shapes={"x": {0: batch}},
                dynamo=True,
                **names,  # type: ignore[arg-type]
            )
    return path


def train_model(prepared: PreparedLike, cfg: AppConfig) -> TrainResult:
    """Train ``cfg.train`` on ``prepared.dataset_path``; log run, metrics, figures, pt2 + ONNX model.

    Does not register the model. Returns the run id, the model URI, the final metrics (of the
    best-by-validation-macro-F1 weights, fp32, evaluated as served) and the test predictions file.
    """
    tcfg = cfg.train
    dataset_path = Path(prepared.dataset_path)
    L.seed_everything(tcfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    # Augmentation lives in the LightningModule's on_after_batch_transfer on purpose.
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")

    datamodule = FashionDataModule(
        dataset_path,
        batch_size=tcfg.batch_size,
        eval_batch_size=tcfg.eval_batch_size,
        limit_train_samples=tcfg.limit_train_samples,
        limit_eval_samples=tcfg.limit_eval_samples,
        num_workers=tcfg.num_workers,
        seed=tcfg.seed,
    )
    datamodule.setup("fit")
    module = FashionClassifier(tcfg)
    experiment_id = ensure_experiment(cfg)
    checkpoint_root = cfg.paths.resolve(tcfg.checkpoint_dir)
    ckpt_path = _resolve_resume(cfg, checkpoint_root)

    with mlflow.start_run(experiment_id=experiment_id) as run:
        run_id = run.info.run_id
        mlflow.set_tags(
            {
                "git_commit": git_commit(cfg.paths.root),
                "data_md5": getattr(prepared, "data_md5", ""),
                "split_hash": getattr(prepared, "split_hash", ""),
                "dataset_path": str(dataset_path),
                "profile": cfg.profile,
                "resumed_from": ckpt_path or "",
                "mlflow.note.content": "Lightning ResNet on Fashion-MNIST (issue 3).",
            }
        )
        mlflow.log_params(_params(cfg, prepared, module.model))
        mlflow.log_params({f"n_{s}": len(datamodule.datasets[s]) for s in ("train", "val", "test")})
        logger = MLFlowLogger(
            experiment_name=cfg.mlflow.experiment_name,
            tracking_uri=cfg.tracking_uri,
            run_id=run_id,
        )
        checkpoint = ModelCheckpoint(
            dirpath=checkpoint_root / run_id,
            filename="best",
            monitor=MONITOR,
            mode="max",
            save_last=True,
            save_top_k=1,
        )
        callbacks: list[L.Callback] = [
            checkpoint,
            EarlyStopping(monitor=MONITOR, mode="max", patience=tcfg.early_stopping_patience),
        ]
        if tcfg.progress_bar:
            callbacks.append(TQDMProgressBar(refresh_rate=20))
        if tcfg.ema_decay > 0:
            callbacks.append(WeightAveraging(multi_avg_fn=ema_update(tcfg.ema_decay)))
        trainer = L.Trainer(
            accelerator=tcfg.accelerator,
            devices=tcfg.devices,
            strategy=tcfg.strategy,
            precision=tcfg.precision,  # type: ignore[arg-type]
            max_epochs=tcfg.max_epochs,
            max_time=timedelta(minutes=tcfg.max_time_minutes) if tcfg.max_time_minutes else None,
            logger=logger,
            callbacks=callbacks,
            enable_progress_bar=tcfg.progress_bar,
            enable_model_summary=tcfg.progress_bar,
            num_sanity_val_steps=0,
            check_val_every_n_epoch=tcfg.check_val_every_n_epoch,
            log_every_n_steps=max(
                1, min(50, len(datamodule.datasets["train"]) // tcfg.batch_size // 4)
            ),
            deterministic=False,
            default_root_dir=str(checkpoint_root),
        )
        started = time.monotonic()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
        fit_seconds = time.monotonic() - started
        # Lightning's logger marks the run finished at the end of fit; the rest still logs to it.

        best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
        if best_path is not None and best_path.is_file():
            best = torch.load(best_path, map_location="cpu", weights_only=False)
            module.load_state_dict(best["state_dict"])
        model = module.model.to("cpu").float().to(memory_format=torch.contiguous_format).eval()
        classifier = Classifier(module=model, class_names=list(CLASS_NAMES))

        results: dict[str, EvalResult] = {}
        for split in ("val", "test"):
            results[split] = evaluate_classifier(classifier, dataset_path, split=split)
        epochs_done = int(module.history[-1]["epoch"]) if module.history else trainer.current_epoch
        images_seen = epochs_done * len(datamodule.datasets["train"])
        metrics: dict[str, float] = {
            **results["val"].metrics(),
            **results["test"].metrics(),
            "train_minutes": fit_seconds / 60.0,
            # Fit time across resumed sessions (equals train_minutes without a resume).
            "training_total_minutes": module.fit_elapsed_s / 60.0,
            "epochs_completed": float(epochs_done),
            "best_epoch": float(_best_epoch(module.history)),
            "train_images_per_s": images_seen / max(fit_seconds, 1e-9),
        }
        mlflow.log_metrics(metrics, step=trainer.global_step + 1)

        out_dir = Path(tempfile.mkdtemp(prefix="train-artifacts-"))
        x_test, y_test = load_split(dataset_path, "test")
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
            mlflow.log_artifact(str(figure), artifact_path="figures")
        mlflow.log_text(results["val"].table() + "\n\n" + test.table(), "evaluation.txt")
        mlflow.log_dict({"history": module.history}, "history.json")

        predictions_dir = cfg.paths.outputs / "predictions"
        predictions_dir.mkdir(parents=True, exist_ok=True)
        predictions_path = predictions_dir / f"{run_id}_test_predictions.npy"
        np.save(predictions_path, test.predictions)
        mlflow.log_artifact(str(predictions_path), artifact_path="predictions")

        example = normalize(x_test[:2]).numpy()
        model_info = log_classifier(
            model,
            input_example=example,
            metadata={
                "model_preset": tcfg.model_preset,
                "flip_tta": tcfg.flip_tta,
                "test_accuracy": test.accuracy,
                "test_macro_f1": test.macro_f1,
                "data_md5": getattr(prepared, "data_md5", ""),
                "split_hash": getattr(prepared, "split_hash", ""),
            },
        )
        onnx_path: Path | None = None
        try:
            onnx_path = export_onnx(model, out_dir / "model.onnx")
            mlflow.log_artifact(str(onnx_path), artifact_path="onnx")
        except Exception as exc:  # ONNX is a convenience export; never lose the run over it.
            log.warning("ONNX export failed (%s); the pt2 model is logged.", exc)
            mlflow.set_tag("onnx_export_error", str(exc).splitlines()[0][:250])

    return TrainResult(
        run_id=run_id,
        model_uri=model_info.model_uri,
        metrics=metrics,
        test_predictions_path=predictions_path,
        best_checkpoint=best_path,
        onnx_path=onnx_path,
    )


def _best_epoch(history: list[dict[str, float]]) -> int:
    scored = [row for row in history if MONITOR in row]
    if not scored:
        return 0
    return int(max(scored, key=lambda row: row[MONITOR])["epoch"])
