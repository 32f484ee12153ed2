"""Uploaded bytes → the training preprocessing → one batched forward → JSON-ready answers.

Everything here runs in a worker thread, never on the event loop. The work per request is bounded
by construction: each image's size is checked from its header before it is decoded, the decoded
pixels of a whole batch are counted against ``max_batch_pixels``, and the work stops as soon as the
client has gone (``cancelled``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from src.monitoring.inputs import InputInfo, describe_input
from src.preprocessing import (
    ImageDecodeError,
    load_pixels,
    normalize_array,
    open_image,
    to_model_image_and_inversion,
)
from src.serving.model_store import LoadedModel


@dataclass(frozen=True)
class ImageLimits:
    formats: Sequence[str]
    max_pixels: int
    max_side: int
    max_batch_pixels: int


@dataclass(frozen=True)
class ImageProblem:
    index: int
    filename: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "filename": self.filename, "detail": self.message}


class BadImages(Exception):
    """One or more uploaded files cannot be classified; ``problems`` says which and why."""

    def __init__(self, problems: list[ImageProblem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


class BatchTooLarge(Exception):
    """The batch's decoded pixels are over ``max_batch_pixels``."""


class ClientGone(Exception):
    """The client disconnected; the rest of the work was dropped."""


def to_model_array(
    data: bytes | memoryview,
    limits: ImageLimits,
    budget: list[int],
    inputs: list[InputInfo] | None = None,
) -> np.ndarray:
    """Encoded image → 28×28 uint8, exactly as at training time; ``budget[0]`` (decoded pixels
    left for this request) is checked and spent before decoding. Raises :class:`ImageDecodeError`
    for anything that is not an acceptable image (including decoder failures PIL does not
    classify), so no input problem can surface as a server error. ``inputs`` (the prediction
    log) gets the upload's :class:`InputInfo` appended."""
    try:
        image = open_image(
            data, formats=limits.formats, max_pixels=limits.max_pixels, max_side=limits.max_side
        )
        pixels = image.size[0] * image.size[1]
        if pixels > budget[0]:
            raise BatchTooLarge(
                f"The images of this request decode to over {limits.max_batch_pixels} pixels in "
                "all; send fewer or smaller images per request."
            )
        budget[0] -= pixels
        array, inverted = to_model_image_and_inversion(load_pixels(image))
        if inputs is not None:
            inputs.append(describe_input(image, array, inverted))
        return array
    except (ImageDecodeError, BatchTooLarge):
        raise
    except MemoryError as exc:
        raise ImageDecodeError("The image is too large to decode; send a smaller one.") from exc
    except Exception as exc:  # odd files can trip decoders in ways PIL does not wrap
        raise ImageDecodeError(
            f"The image is damaged or cannot be decoded ({type(exc).__name__}); "
            "send a PNG, JPEG, BMP, GIF or WebP image."
        ) from exc


def decode_all(
    blobs: Sequence[bytes | memoryview],
    filenames: Sequence[str | None],
    limits: ImageLimits,
    cancelled: threading.Event | None = None,
    inputs: list[InputInfo] | None = None,
) -> np.ndarray:
    """Decode every file into the model's normalised input (N, 1, 28, 28), or raise
    :class:`BadImages` naming each bad file; ``inputs``, when given, receives one
    :class:`InputInfo` per file."""
    arrays: list[np.ndarray] = []
    problems: list[ImageProblem] = []
    budget = [limits.max_batch_pixels]
    for index, data in enumerate(blobs):
        if cancelled is not None and cancelled.is_set():
            raise ClientGone
        try:
            arrays.append(to_model_array(data, limits, budget, inputs))
        except ImageDecodeError as exc:
            problems.append(ImageProblem(index, filenames[index], str(exc)))
    if problems:
        raise BadImages(problems)
    if cancelled is not None and cancelled.is_set():
        raise ClientGone
    return normalize_array(np.stack(arrays))


def classify(
    model: LoadedModel,
    blobs: Sequence[bytes | memoryview],
    filenames: Sequence[str | None],
    limits: ImageLimits,
    *,
    top_k: int,
    cancelled: threading.Event | None = None,
    inputs: list[InputInfo] | None = None,
) -> list[dict[str, Any]]:
    """Decode every file, then run ONE forward over all of them with ``model``; ``inputs``, when
    given, receives one :class:`InputInfo` per file (for the prediction log)."""
    images = decode_all(blobs, filenames, limits, cancelled, inputs)
    return answers(model.predict_proba(images), model.class_names, model.version, top_k)


def answers(
    probabilities: np.ndarray, class_names: Sequence[str], version: str, top_k: int
) -> list[dict[str, Any]]:
    k = min(top_k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    results = []
    for row, ranked in zip(probabilities, order, strict=True):
        best = int(ranked[0])
        results.append(
            {
                "label": class_names[best],
                "class_id": best,
                "confidence": float(row[best]),
                "top_k": [
                    {"label": class_names[int(i)], "probability": float(row[int(i)])}
                    for i in ranked
                ],
                "model_version": version,
            }
        )
    return results
