"""The single preprocessing path: identity on Fashion-MNIST images, robust on anything else."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from src.preprocessing import (
    MEAN,
    STD,
    ImageDecodeError,
    decode_image,
    normalize,
    preprocess_image,
    to_model_image,
)
from tests.helpers.api import ModelSources
from tests.helpers.images import png_header_only
from tests.helpers.serving import served_inputs


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _garment() -> np.ndarray:
    rng = np.random.default_rng(0)
    array = np.zeros((28, 28), dtype=np.uint8)
    array[4:24, 8:20] = rng.integers(100, 255, size=(20, 12), dtype=np.uint8)
    return array


def test_fashion_mnist_image_is_unchanged_by_the_api_path(model_sources: ModelSources) -> None:
    """What the served model receives for an uploaded 28×28 grayscale PNG (the API's request
    path) is the training tensor of the same array, bit for bit."""
    array = _garment()
    served = served_inputs(model_sources, [_encode(Image.fromarray(array))])
    trained = normalize(array[None])
    assert served.shape == (1, 1, 28, 28)
    assert torch.equal(torch.from_numpy(served), trained)


def test_normalize_shapes_and_scale() -> None:
    batch = np.full((3, 28, 28), 255, dtype=np.uint8)
    out = normalize(batch)
    assert out.shape == (3, 1, 28, 28) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, (1.0 - MEAN) / STD))
    with pytest.raises(ValueError, match="grayscale"):
        normalize(np.zeros((2, 3, 28, 28), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP"])
def test_accepted_formats_and_colour_become_28x28(fmt: str) -> None:
    colour = Image.new("RGB", (90, 60), (200, 30, 30))
    tensor = preprocess_image(_encode(colour, fmt))
    assert tensor.shape == (1, 28, 28)
    assert torch.isfinite(tensor).all()


def test_light_background_photo_is_inverted_to_dark_background() -> None:
    photo = np.full((100, 100), 250, dtype=np.uint8)
    photo[20:80, 30:70] = 40  # a dark garment on white paper
    array = to_model_image(Image.fromarray(photo))
    assert array[0, 0] < 30 and array[14, 14] > 150


def test_transparent_png_is_flattened() -> None:
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert to_model_image(rgba).shape == (28, 28)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not an image"),
        (_encode(Image.new("L", (64, 64), 7))[:40], "damaged or truncated"),
        (
            _encode(Image.fromarray(_garment()).resize((64, 64)), "JPEG")[:300],
            "damaged or truncated",
        ),
    ],
)
def test_bad_bytes_raise_a_clear_error(payload: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(payload)


def test_too_many_pixels_is_refused_before_decoding() -> None:
    # The header says 300x300 and the pixel data cannot be decoded: only a check made before
    # decoding refuses it for its size.
    big = png_header_only(300, 300)
    with pytest.raises(ImageDecodeError, match="over the limit of 40000 pixels"):
        decode_image(big, max_pixels=200 * 200)
    with pytest.raises(ImageDecodeError, match="damaged or truncated"):
        decode_image(big, max_pixels=300 * 300)


def test_format_allow_list_is_enforced() -> None:
    tiff = _encode(Image.new("L", (28, 28)), "TIFF")
    with pytest.raises(ImageDecodeError, match="accepted format"):
        decode_image(tiff)
