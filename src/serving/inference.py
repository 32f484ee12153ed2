"""Uploaded bytes → the training preprocessing → one batched forward → JSON-ready answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from src.monitoring.inputs import InputInfo, describe_input
from src.preprocessing import (
    ImageDecodeError,
    decode_image,
    normalize,
    to_model_image_and_inversion,
)
from src.serving.model_store import LoadedModel


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


def to_model_array(
    data: bytes,
    *,
    formats: Sequence[str],
    max_pixels: int,
    inputs: list[InputInfo] | None = None,
) -> np.ndarray:
    """Encoded image → 28×28 uint8, exactly as at training time. Raises :class:`ImageDecodeError`
    for anything that is not an acceptable image (including decoder failures PIL does not
    classify), so no input problem can surface as a server error. ``inputs`` (prediction log)
    gets the upload's :class:`InputInfo` appended."""
    try:
        image = decode_image(data, formats=formats, max_pixels=max_pixels)
        array, inverted = to_model_image_and_inversion(image)
        if inputs is not None:
            inputs.append(describe_input(image, array, inverted))
        return array
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        raise ImageDecodeError("The image is too large to decode; send a smaller one.") from exc
    except Exception as exc:  # odd files can trip decoders in ways PIL does not wrap
        raise ImageDecodeError(
            f"The file could not be decoded as an image ({type(exc).__name__}); "
            "send a PNG, JPEG, BMP, GIF or WebP image."
        ) from exc


def classify(
    model: LoadedModel,
    blobs: Sequence[bytes],
    filenames: Sequence[str | None],
    *,
    formats: Sequence[str],
    max_pixels: int,
    top_k: int,
    inputs: list[InputInfo] | None = None,
) -> list[dict[str, Any]]:
    """Decode every file, then run ONE forward over all of them with ``model``. ``inputs``, when
    given, receives one :class:`InputInfo` per file (for the prediction log)."""
    arrays: list[np.ndarray] = []
    problems: list[ImageProblem] = []
    for index, data in enumerate(blobs):
        try:
            arrays.append(
                to_model_array(data, formats=formats, max_pixels=max_pixels, inputs=inputs)
            )
        except ImageDecodeError as exc:
            problems.append(ImageProblem(index, filenames[index], str(exc)))
    if problems:
        raise BadImages(problems)
    probabilities = model.predict_proba(normalize(np.stack(arrays)))
    return answers(probabilities, model.class_names, model.version, top_k)


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
