"""What the prediction log and the reference profile record about an input image.

The same statistics are computed on the API's uploads (after the shared preprocessing) and on the
validation split at training time, so the monitor compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class InputInfo:
    """An upload as received (size, mode) and as the model saw it (28x28 pixel statistics)."""

    width: int
    height: int
    mode: str
    mean: float  # of the model input, on the 0..1 scale
    std: float
    inverted: bool  # the preprocessing inverted a light-background picture
    array: np.ndarray | None = None  # the 28x28 model input (kept only if images are stored)


def pixel_stats(arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean and std of ``uint8`` images shaped (N, H, W), on the 0..1 scale."""
    flat = np.asarray(arrays, dtype=np.float32).reshape(len(arrays), -1) / 255.0
    return flat.mean(axis=1), flat.std(axis=1)


def mean_and_std(array: np.ndarray) -> tuple[float, float]:
    """Mean and (population) std of an image's pixels from one sum and one dot product: on a
    28x28 image this is several times cheaper than ``mean()`` + ``std()`` (the API pays it per
    upload)."""
    flat = array.ravel().astype(np.float64)
    mean = float(flat.sum()) / flat.size
    variance = max(0.0, float(flat @ flat) / flat.size - mean * mean)
    return mean, variance**0.5


def describe_input(image: Image.Image, array: np.ndarray, inverted: bool) -> InputInfo:
    """``image``: the decoded upload; ``array``: its 28x28 ``uint8`` model input."""
    mean, std = mean_and_std(array)
    return InputInfo(
        width=int(image.width),
        height=int(image.height),
        mode=str(image.mode),
        mean=mean / 255.0,
        std=std / 255.0,
        inverted=bool(inverted),
        array=array,
    )
