"""What the served model receives: the uploaded files posted to ``/predict/batch`` of the app (in
process, the server's own request, decode and forward path), the ONNX model's forward recorded."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

from src.onnx_model import OnnxClassifier
from tests.helpers.api import ModelSources, Registry, api_client_for, registry_names


def served_inputs(sources: ModelSources, blobs: Sequence[bytes]) -> np.ndarray:
    """The float32 (N, 1, 28, 28) batch the served model gets for these uploaded files."""
    uri = sources.tracking_uri
    registry = Registry(
        uri, f"inputs-{os.getpid()}-{next(registry_names)}", MlflowClient(uri, uri), sources
    )
    registry.add_production("varied")
    client = api_client_for(registry, micro_batch="off")
    forwarded: list[np.ndarray] = []
    real = OnnxClassifier.predict_proba

    def recording(model: OnnxClassifier, images: np.ndarray, *args: Any) -> np.ndarray:
        forwarded.append(np.array(images, copy=True))
        return real(model, images, *args)

    OnnxClassifier.predict_proba = recording  # type: ignore[method-assign]
    try:
        files = [("files", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]
        response = client.post("/predict/batch", files=files)
    finally:
        OnnxClassifier.predict_proba = real  # type: ignore[method-assign]
        client.__exit__(None, None, None)
    assert response.status_code == 200, response.text
    [batch] = forwarded
    return batch
