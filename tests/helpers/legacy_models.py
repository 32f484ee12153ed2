"""Model versions as the trainer registered them before the onnx flavour: MLflow's ``pt2``
PyTorch model (whose archive holds a pickled member) plus the run's ``onnx/model.onnx``, which is
what the API, the gate and the evaluation still serve and score for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import Model

from src.labels import CLASS_NAMES
from src.model_io import LoadedClassifier, model_metadata, pip_requirements
from src.preprocessing import IMAGE_SIZE


def log_pt2_classifier(model: torch.nn.Module, **metadata: Any) -> Any:
    """Log ``model`` to the active run as before: a batch-size-agnostic pt2 model named ``model``."""
    model = model.to("cpu").float().eval()
    # torch.export specialises a size-1 dimension to a constant; batch 2 keeps it dynamic.
    example = np.zeros((2, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    return mlflow.pytorch.log_model(
        model,
        name="model",
        serialization_format="pt2",
        input_example=example,
        metadata=model_metadata(CLASS_NAMES, metadata),
        pip_requirements=[r for r in pip_requirements() if not r.startswith("onnx")]
        + [f"torch=={torch.__version__.split('+')[0]}"],
    )


def load_pt2_classifier(model_uri: str) -> LoadedClassifier:
    """The pt2 model back in torch: unpickles, so only for a test's own models."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    metadata = dict(Model.load(str(local / "MLmodel")).metadata or {})
    module = mlflow.pytorch.load_model(str(local), map_location="cpu")
    return LoadedClassifier(
        module=module, class_names=list(metadata.get("class_names") or CLASS_NAMES)
    )
