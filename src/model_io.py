"""Log a classifier to MLflow and load it back for evaluation.

The model is saved in MLflow's ``pt2`` format (``torch.export``). The exported graph takes
normalised float32 images shaped (N, 1, 28, 28) for any N and returns logits; the MLmodel metadata
carries the class names and the preprocessing constants. A pt2 archive still holds a pickled
member that ``torch.export.load`` unpickles, so :func:`load_classifier` is only for a person
evaluating a model by hand (``python -m src.evaluate``). Nothing automatic loads it: the API
serves, and the train-flow scores (evaluation, gate, reference profile), the ONNX export of the
same run through :func:`load_served_classifier` (``src/onnx_model.py``), which is data only.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from src.labels import CLASS_NAMES
from src.onnx_model import ONNX_MODEL_ARTIFACT, OnnxClassifier, load_onnx_classifier
from src.preprocessing import IMAGE_SIZE, MEAN, STD

MODEL_ARTIFACT_NAME = "model"
PREPROCESSING_VERSION = "fmnist-gray28-v1"


def model_signature(num_classes: int = len(CLASS_NAMES)) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, IMAGE_SIZE, IMAGE_SIZE))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )


def pip_requirements() -> list[str]:
    # Pinned explicitly: MLflow's requirement inference is slow (it imports the model's packages).
    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]


def log_classifier(
    model: torch.nn.Module,
    *,
    class_names: tuple[str, ...] | list[str] = CLASS_NAMES,
    input_example: np.ndarray | None = None,
    metadata: dict[str, Any] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log ``model`` (logits out) to the active MLflow run as a batch-size-agnostic ``pt2`` model."""
    model = model.to("cpu").float().to(memory_format=torch.contiguous_format).eval()
    if input_example is None:
        input_example = np.zeros((2, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    if input_example.shape[0] < 2:
        # torch.export specialises a size-1 dimension to a constant; batch 2+ keeps it dynamic.
        input_example = np.concatenate([input_example, input_example])
    full_metadata = {
        "class_names": list(class_names),
        "preprocessing": PREPROCESSING_VERSION,
        "normalize_mean": MEAN,
        "normalize_std": STD,
        **(metadata or {}),
    }
    return mlflow.pytorch.log_model(
        model,
        name=MODEL_ARTIFACT_NAME,
        serialization_format="pt2",
        signature=model_signature(len(class_names)),
        input_example=input_example.astype(np.float32),
        metadata=full_metadata,
        pip_requirements=pip_requirements(),
    )


@dataclass
class LoadedClassifier:
    """A logged model (or checkpoint) loaded back for scoring, plus what names its answers.

    Not the trainer: that is :class:`src.training.module.LitClassifier`."""

    module: torch.nn.Module
    class_names: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    model_uri: str = ""

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.to(torch.float32).contiguous())

    def predict_proba(self, images: torch.Tensor) -> np.ndarray:
        """Normalised images (N, 1, 28, 28) → class probabilities (N, C)."""
        return torch.softmax(self.logits(images).float(), dim=1).numpy()

    def predict_proba_batched(self, images: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        parts = [
            self.predict_proba(images[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.class_names)), np.float32)


def load_classifier(model_uri: str) -> LoadedClassifier:
    """Load a model logged by :func:`log_classifier` from any MLflow URI (``models:/...``, ``runs:/...``, path)."""
    local_path = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    return load_classifier_from_path(local_path, model_uri=model_uri)


def load_served_classifier(client: MlflowClient, run_id: str | None) -> OnnxClassifier:
    """Run ``run_id``'s ONNX model (``onnx/model.onnx``) in ONNX Runtime, checked as the API
    checks it: the file the API serves, read as data (nothing unpickled), so a model file that
    someone with write access to the artifact store replaced cannot run code here."""
    if not run_id:
        raise ValueError(
            "the model version has no run, so no ONNX model to score; register models "
            "logged by `make train`"
        )
    with tempfile.TemporaryDirectory(prefix="served-model-") as tmp:
        try:
            local = Path(client.download_artifacts(run_id, ONNX_MODEL_ARTIFACT, tmp))
            model_bytes = local.read_bytes()
        except (MlflowException, OSError) as exc:
            raise ValueError(
                f"run {run_id} has no readable {ONNX_MODEL_ARTIFACT} "
                f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}); "
                "models are scored only from their ONNX file, never the pickled pt2: register "
                "models logged by `make train`"
            ) from exc
    return load_onnx_classifier(model_bytes, CLASS_NAMES, threads=os.cpu_count() or 1)


def load_classifier_from_path(local_path: Path, model_uri: str = "") -> LoadedClassifier:
    mlmodel = Model.load(str(local_path / "MLmodel"))
    metadata = dict(mlmodel.metadata or {})
    class_names = metadata.get("class_names") or list(CLASS_NAMES)
    if isinstance(class_names, str):
        class_names = json.loads(class_names)
    module = mlflow.pytorch.load_model(str(local_path), map_location="cpu")
    return LoadedClassifier(
        module=module,
        class_names=list(class_names),
        metadata=metadata,
        model_uri=model_uri or str(local_path),
    )


def export_onnx(model: torch.nn.Module, path: Path) -> Path:
    """Export ``model`` (fp32, eval) to ONNX with a dynamic batch dimension (input ``images``).

    The TorchScript-based exporter is much faster for this net than the torch.export-based one
    (the default since torch 2.9), so the latter is only the fallback.
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
                **names,
            )
        except Exception:
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamic_shapes={"x": {0: batch}},
                dynamo=True,
                **names,
            )
    return path


def log_onnx(client: MlflowClient, run_id: str, model: torch.nn.Module) -> Path:
    """Export ``model`` and log it into run ``run_id`` as the file the API serves."""
    folder, name = ONNX_MODEL_ARTIFACT.rsplit("/", 1)
    try:
        path = export_onnx(model, Path(tempfile.mkdtemp(prefix="onnx-")) / name)
    except Exception as exc:
        raise RuntimeError(
            f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); the API "
            "serves the ONNX file, so this model cannot be registered. Check that the network "
            "uses only ONNX-exportable layers."
        ) from exc
    client.log_artifact(run_id, str(path), artifact_path=folder)
    return path
