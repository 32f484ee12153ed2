"""The one preprocessing path shared by training, evaluation and the API (no train/serve skew).

Training data arrive as ``uint8`` arrays of 28×28 grayscale images and go through
:func:`normalize`. The API receives encoded image bytes of any size and mode; they go through
:func:`decode_image` and :func:`to_model_image` (which are the identity on a 28×28 grayscale
Fashion-MNIST image) and then the same :func:`normalize`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from src.labels import IMAGE_SIZE

# Fashion-MNIST training-set pixel statistics (on the 0..1 scale).
MEAN = 0.2860
STD = 0.3530
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
DEFAULT_MAX_PIXELS = 4096 * 4096
# File signatures, to tell a damaged image of an accepted format from something else entirely.
_SIGNATURES: dict[bytes, str] = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"RIFF": "WEBP",
}


class ImageDecodeError(ValueError):
    """The bytes are not an image this service accepts; the message says why."""


def decode_image(
    data: bytes,
    *,
    formats: Sequence[str] = ALLOWED_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode untrusted bytes into a fully loaded PIL image, or raise :class:`ImageDecodeError`."""
    if not data:
        raise ImageDecodeError("The file is empty; send a PNG, JPEG, BMP, GIF or WebP image.")
    try:
        with warnings.catch_warnings():
            # Turn PIL's "possible decompression bomb" warning into an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(formats))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"The image is {width}x{height} pixels, over the limit of {max_pixels} pixels; "
                    "send a smaller image."
                )
            image.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        claimed = next((fmt for sig, fmt in _SIGNATURES.items() if data.startswith(sig)), None)
        if claimed in formats:
            raise ImageDecodeError(
                f"The {claimed} image is damaged or truncated and cannot be decoded."
            ) from exc
        raise ImageDecodeError(
            f"The file is not an image in an accepted format ({', '.join(formats)})."
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"The image is too large to decode safely: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(
            f"The image is damaged or truncated and cannot be decoded ({exc})."
        ) from exc
    return image


def to_model_image(image: Image.Image) -> np.ndarray:
    """Any PIL image → 28×28 ``uint8`` grayscale array (see :func:`to_model_image_and_inversion`)."""
    return to_model_image_and_inversion(image)[0]


def to_model_image_and_inversion(image: Image.Image) -> tuple[np.ndarray, bool]:
    """Any PIL image → 28×28 ``uint8`` grayscale array in Fashion-MNIST's convention.

    Colour and alpha are flattened to grayscale; non-square images are padded to a square with
    their border colour, then resized. Fashion-MNIST shows a light garment on a black background:
    a picture with a light background (a typical photo or drawing) is inverted to match.
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        # Transparent areas become the background (black), as in the training images.
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    gray = image.convert("L")
    if gray.size == (IMAGE_SIZE, IMAGE_SIZE):
        array = np.array(gray, dtype=np.uint8)
    else:
        border = _border_value(np.asarray(gray, dtype=np.uint8))
        side = max(gray.size)
        square = Image.new("L", (side, side), color=border)
        square.paste(gray, ((side - gray.width) // 2, (side - gray.height) // 2))
        resized = square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
        array = np.array(resized, dtype=np.uint8)
    inverted = _border_value(array) > 127
    if inverted:
        array = np.array(ImageOps.invert(Image.fromarray(array)), dtype=np.uint8)
    return array, inverted  # whether it was inverted goes into the prediction log


def _border_value(array: np.ndarray) -> int:
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    return int(np.median(border))


def normalize(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8`` images shaped (H, W), (N, H, W) or (N, 1, H, W) → float32 (N, 1, H, W), standardised."""
    tensor = torch.as_tensor(images)
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(1)
    if tensor.ndim != 4 or tensor.shape[1] != 1:
        raise ValueError(
            f"Expected grayscale images shaped (N, 1, H, W); got {tuple(tensor.shape)}."
        )
    return (tensor.to(torch.float32) / 255.0 - MEAN) / STD


def preprocess_image(
    image: bytes | Image.Image,
    *,
    formats: Sequence[str] = ALLOWED_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Encoded bytes or a PIL image → normalised float32 tensor shaped (1, 28, 28)."""
    pil = (
        decode_image(image, formats=formats, max_pixels=max_pixels)
        if isinstance(image, bytes)
        else image
    )
    return normalize(to_model_image(pil))[0]
