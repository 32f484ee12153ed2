"""The served model: the ONNX graph the trainer logs with every run (``onnx/model.onnx``), run by
ONNX Runtime.

An ONNX file is a protobuf of operators and weights: loading it parses data and runs no code from
the file, unlike MLflow's pickle flavour or the pickled member of a pt2 archive. ONNX Runtime
executes only its built-in operators (no custom-op library is ever registered here), so a model
file from the registry cannot run code in the API process. It also starts in a fraction of the time
torch needs and runs the flip test-time averaging the trainer exported inside the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from src.labels import IMAGE_SIZE, ONNX_MODEL_ARTIFACT

ONNX_ARTIFACT = ONNX_MODEL_ARTIFACT
RUNTIME = f"onnxruntime {ort.__version__}"


class ModelLoadError(RuntimeError):
    """The model file is not a usable classifier; the message says why."""


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads would spin on the cores that decode the next request's images.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@dataclass
class OnnxClassifier:
    """An ONNX Runtime session over normalised images (N, 1, 28, 28) → class probabilities."""

    session: ort.InferenceSession
    class_names: list[str]
    threads: int
    input_name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        return RUNTIME

    def logits(self, images: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(images, dtype=np.float32)
        output = self.session.run(None, {self.input_name: batch})[0]
        return np.asarray(output, dtype=np.float32)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        logits = self.logits(images)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities


def load_onnx_classifier(
    model_bytes: bytes, class_names: Sequence[str], *, threads: int
) -> OnnxClassifier:
    """Parse ``model_bytes`` into a session, check its input/output shapes and warm it up."""
    try:
        session = ort.InferenceSession(
            model_bytes, sess_options=_session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own exception types for unparsable files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"not a valid ONNX model ({first})") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelLoadError(
            "the ONNX model must take one input shaped (N, 1, 28, 28); got "
            + ", ".join(f"{i.name}{i.shape}" for i in inputs)
        )
    classifier = OnnxClassifier(
        session=session, class_names=list(class_names), threads=threads, input_name=inputs[0].name
    )
    for batch in (1, 2):  # warm-up, and a check that the batch dimension is dynamic
        try:
            probabilities = classifier.predict_proba(
                np.zeros((batch, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
            )
        except Exception as exc:
            raise ModelLoadError(f"the ONNX model fails on a batch of {batch}: {exc}") from exc
        if probabilities.shape != (batch, len(class_names)):
            raise ModelLoadError(
                f"the ONNX model answers shape {probabilities.shape} for {batch} images; "
                f"expected ({batch}, {len(class_names)})"
            )
    return classifier
