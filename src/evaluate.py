"""Evaluate a classifier on a split of the prepared dataset; also a CLI.

    python -m src.evaluate --model-uri models:/clothing-classifier@production [--dataset PATH]
    python -m src.evaluate --run-id RUN_ID
    python -m src.evaluate --checkpoint outputs/checkpoints/<run>/best.ckpt

The classifier is used exactly as the API uses it (fp32, its own forward; any test-time
augmentation is part of the model), so the printed numbers are those of the served model.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from src.data.split import load_split
from src.metrics import score_predictions
from src.model_io import LoadedClassifier
from src.preprocessing import normalize


@dataclass
class EvalResult:
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    predictions: np.ndarray
    split: str = "test"
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    probabilities: np.ndarray | None = None

    def metrics(self, prefix: str | None = None) -> dict[str, float]:
        """Flat MLflow-style metrics: ``<split>_accuracy``, ``<split>_macro_f1``, ``<split>_f1_<class>``."""
        prefix = self.split if prefix is None else prefix
        flat = {f"{prefix}_accuracy": self.accuracy, f"{prefix}_macro_f1": self.macro_f1}
        for name, value in self.per_class_f1.items():
            flat[f"{prefix}_f1_{metric_key(name)}"] = value
        return flat

    def table(self) -> str:
        lines = [
            f"split: {self.split} ({len(self.predictions)} images)",
            f"accuracy: {self.accuracy:.4f}",
            f"macro-F1: {self.macro_f1:.4f}",
            "per-class F1:",
        ]
        lines += [f"  {name:<12} {value:.4f}" for name, value in self.per_class_f1.items()]
        return "\n".join(lines)


class Scorer(Protocol):
    """What evaluation needs of a model: :class:`src.model_io.LoadedClassifier` (torch) or
    :class:`src.onnx_model.OnnxClassifier` (the served ONNX file)."""

    @property
    def class_names(self) -> list[str]: ...

    def predict_proba_batched(self, images: Any, batch_size: int = ...) -> np.ndarray: ...


def metric_key(class_name: str) -> str:
    """'T-shirt/top' -> 't_shirt_top' (safe as an MLflow metric name)."""
    return re.sub(r"[^a-z0-9]+", "_", class_name.lower()).strip("_")


def evaluate_classifier(
    classifier: Scorer,
    dataset_path: Path | str,
    split: str = "test",
    batch_size: int = 1000,
) -> EvalResult:
    """Predict ``split`` of the prepared ``.npz`` with ``classifier`` and score it."""
    images, labels = load_split(dataset_path, split)
    probabilities = classifier.predict_proba_batched(normalize(images), batch_size=batch_size)
    predictions = probabilities.argmax(axis=1).astype(np.int64)
    scores = score_predictions(labels, predictions, len(classifier.class_names))
    return EvalResult(
        accuracy=scores.accuracy,
        macro_f1=scores.macro_f1,
        per_class_f1={
            name: float(scores.per_class_f1[i]) for i, name in enumerate(classifier.class_names)
        },
        predictions=predictions,
        split=split,
        confusion=scores.confusion,
        probabilities=probabilities,
    )


def classifier_from_checkpoint(path: Path | str) -> LoadedClassifier:
    """Rebuild the model from a Lightning checkpoint written by training (fp32, eval mode)."""
    from src.labels import CLASS_NAMES
    from src.training.module import LitClassifier

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint {path} not found; pass a .ckpt from outputs/checkpoints/."
        )
    # The project's checkpoints hold tensors and plain containers only, so the restricted
    # unpickler reads them: a planted checkpoint cannot run code.
    module = LitClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    model = module.model.float().to(memory_format=torch.contiguous_format).eval()
    return LoadedClassifier(module=model, class_names=list(CLASS_NAMES), model_uri=str(path))


def _default_dataset() -> Path:
    """The newest split written by the data flow (``outputs/prepared/<data md5>/splits.npz``)."""
    from src.config import load_config

    cfg = load_config()
    candidates = sorted(
        (cfg.paths.outputs / "prepared").glob("*/splits.npz"), key=lambda p: p.stat().st_mtime
    )
    if not candidates:
        raise FileNotFoundError(
            f"No prepared split under {cfg.paths.outputs / 'prepared'}; run the data flow "
            "(make train) or pass --dataset PATH."
        )
    return candidates[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.evaluate", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model-uri", help="an MLflow model URI, e.g. models:/clothing-classifier@production"
    )
    source.add_argument("--run-id", help="an MLflow run whose logged model to evaluate")
    source.add_argument("--checkpoint", help="a Lightning checkpoint (.ckpt) written by training")
    parser.add_argument("--dataset", help="the prepared .npz (default: the data flow's output)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--no-log", action="store_true", help="do not log the metrics to MLflow")
    args = parser.parse_args(argv)

    import mlflow

    from src.config import load_config
    from src.model_io import MODEL_ARTIFACT_NAME, load_classifier

    cfg = load_config()
    mlflow.set_tracking_uri(cfg.tracking_uri)
    dataset = Path(args.dataset) if args.dataset else _default_dataset()
    classifier: Scorer
    if args.checkpoint:
        classifier, what = classifier_from_checkpoint(args.checkpoint), args.checkpoint
    else:
        # The registered ONNX graph in ONNX Runtime, as the API serves it (nothing unpickled).
        what = args.model_uri or f"runs:/{args.run_id}/{MODEL_ARTIFACT_NAME}"
        classifier = load_classifier(what, cfg.tracking_uri)
    result = evaluate_classifier(classifier, dataset, split=args.split)
    print(f"model: {what}")
    print(f"dataset: {dataset}")
    print(result.table())
    if not args.no_log and not args.checkpoint:
        _log_to_mlflow(args.model_uri, args.run_id, result)
    return 0


def _log_to_mlflow(model_uri: str | None, run_id: str | None, result: EvalResult) -> None:
    """Log the metrics to the model's source run, prefixed ``eval_`` (training's own stay intact)."""
    import mlflow

    client = mlflow.MlflowClient()
    target_run = run_id
    if target_run is None and model_uri is not None and model_uri.startswith("models:/"):
        name, _, ref = model_uri[len("models:/") :].partition("@")
        if ref:
            target_run = client.get_model_version_by_alias(name, ref).run_id
        else:
            name, _, version = model_uri[len("models:/") :].partition("/")
            if version.isdigit():
                target_run = client.get_model_version(name, version).run_id
    elif target_run is None and model_uri is not None and model_uri.startswith("runs:/"):
        target_run = model_uri[len("runs:/") :].split("/")[0]
    if target_run is None:
        print("note: could not tell which run the model came from; metrics not logged.")
        return
    for key, value in result.metrics(prefix=f"eval_{result.split}").items():
        client.log_metric(target_run, key, value)
    print(f"logged eval_{result.split}_* metrics to run {target_run}")


if __name__ == "__main__":
    from src.cli import call

    raise SystemExit(call("evaluate", main))
