"""What the served model receives: the API's own decode-and-normalise path
(``src.serving.inference.classify``, as ``src/serving/service.py`` calls it), with a recorder in
the model's place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from src.labels import CLASS_NAMES
from src.preprocessing import ALLOWED_FORMATS
from src.serving.inference import ImageLimits, classify


class InputRecorder:
    """Takes the model's place in :func:`classify` and keeps each batch it is given."""

    def __init__(self) -> None:
        self.class_names = list(CLASS_NAMES)
        self.version = "recorder"
        self.batches: list[np.ndarray] = []

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        self.batches.append(np.array(images, copy=True))
        return np.full((len(images), len(CLASS_NAMES)), 1 / len(CLASS_NAMES), dtype=np.float32)


def served_inputs(blobs: Sequence[bytes]) -> np.ndarray:
    """The float32 (N, 1, 28, 28) batch the served model gets for these uploaded files."""
    limits = ImageLimits(
        ALLOWED_FORMATS, max_pixels=2048 * 2048, max_side=8192, max_batch_pixels=2**31
    )
    recorder: Any = InputRecorder()
    classify(recorder, list(blobs), [None] * len(blobs), limits, top_k=3)
    [batch] = recorder.batches
    return batch
