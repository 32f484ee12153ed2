"""The one preprocessing path shared by training, evaluation and the API (no train/serve skew).

Training data arrive as ``uint8`` arrays of 28×28 grayscale images and go through
:func:`normalize_array` (numpy; :func:`normalize` is the same numbers as a torch tensor). The API
receives encoded image bytes of any size and mode; they go through :func:`decode_image` and
:func:`to_model_image` (the identity on a 28×28 grayscale Fashion-MNIST image) and then the same
:func:`normalize_array`.

This module imports neither torch nor MLflow: the API process uses it and must start fast.
Memory is bounded by construction: the size is checked from the header before any pixel is
decoded, JPEGs are decoded at reduced scale, and nothing is ever allocated at more than the
decoded size (no padding of a long thin image to a huge square).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 28  # the model input: IMAGE_SIZE x IMAGE_SIZE grayscale, as in Fashion-MNIST
# Fashion-MNIST training-set pixel statistics (on the 0..1 scale).
MEAN = 0.2860
STD = 0.3530
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
DEFAULT_MAX_PIXELS = 2048 * 2048
DEFAULT_MAX_SIDE = 8192
# JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale that keeps this many pixels per side,
# enough for a high-quality downscale to IMAGE_SIZE.
_JPEG_DRAFT_SIDE = IMAGE_SIZE * 4
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
_UPRIGHT: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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


def open_image(
    data: bytes | memoryview,
    *,
    formats: Sequence[str] = ALLOWED_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Image.Image:
    """Read only the header of untrusted bytes and check the size limits; nothing is decoded yet.

    The pixel limit applies to the size that will be decoded (JPEGs are decoded at reduced scale).
    """
    if not len(data):
        raise ImageDecodeError("The file is empty; send a PNG, JPEG, BMP, GIF or WebP image.")
    try:
        with warnings.catch_warnings():
            # Our own limits below are tighter than PIL's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(formats))
    except UnidentifiedImageError as exc:
        head = bytes(data[:8])
        claimed = next((fmt for sig, fmt in _SIGNATURES.items() if head.startswith(sig)), None)
        if claimed in formats:
            raise ImageDecodeError(
                f"The {claimed} image is damaged or truncated and cannot be decoded."
            ) from exc
        raise ImageDecodeError(
            f"The file is not an image in an accepted format ({', '.join(formats)})."
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"The image is too large to decode safely: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(
            f"The image is damaged or truncated and cannot be decoded ({exc})."
        ) from exc
    width, height = image.size
    if max(width, height) > max_side or min(width, height) < 1:
        raise ImageDecodeError(
            f"The image is {width}x{height} pixels; its longest side is over the limit of "
            f"{max_side} pixels. Send a smaller image."
        )
    if image.format == "JPEG" and image.mode in ("L", "RGB"):
        image.draft("L", (_JPEG_DRAFT_SIDE, _JPEG_DRAFT_SIDE))
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"The image is {width}x{height} pixels, over the limit of {max_pixels} pixels; "
            "send a smaller image."
        )
    return image


def decode_image(
    data: bytes | memoryview,
    *,
    formats: Sequence[str] = ALLOWED_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Image.Image:
    """Decode untrusted bytes into a fully loaded PIL image, or raise :class:`ImageDecodeError`."""
    return load_pixels(open_image(data, formats=formats, max_pixels=max_pixels, max_side=max_side))


def load_pixels(image: Image.Image) -> Image.Image:
    """Decode the pixels of an image from :func:`open_image`, or raise :class:`ImageDecodeError`."""
    try:
        image.load()
    except MemoryError as exc:
        raise ImageDecodeError("The image is too large to decode; send a smaller one.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(
            f"The image is damaged or truncated and cannot be decoded ({exc})."
        ) from exc
    return image


def _orientation(image: Image.Image) -> int:
    if "exif" not in image.info:  # every decoder puts an EXIF block there; most files have none
        return 1
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block is not worth refusing the picture for
        return 1


def _flatten_to_gray(image: Image.Image) -> Image.Image:
    """Grayscale; transparent areas become the black background, as in the training images."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        # Composited on black: gray * alpha / 255, one channel at a time (no RGBA copies).
        return ImageChops.multiply(rgba.convert("L"), rgba.getchannel("A"))
    return image if image.mode == "L" else image.convert("L")


def to_model_image(image: Image.Image) -> np.ndarray:
    """Any PIL image → 28×28 ``uint8`` grayscale array (see :func:`to_model_image_and_inversion`)."""
    return to_model_image_and_inversion(image)[0]


def to_model_image_and_inversion(image: Image.Image) -> tuple[np.ndarray, bool]:
    """Any PIL image → 28×28 ``uint8`` grayscale array in Fashion-MNIST's convention.

    EXIF orientation is applied; colour and alpha are flattened to grayscale; the image is resized
    keeping its aspect ratio so its longest side is 28, then centred on a 28×28 square of its
    border colour. Fashion-MNIST shows a light garment on a black background: a picture with a
    light background (a typical photo or drawing) is inverted to match.
    """
    orientation = _orientation(image)
    gray = _flatten_to_gray(image)
    if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
        width, height = gray.size
        scale = IMAGE_SIZE / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = gray.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if orientation in _UPRIGHT:
        gray = gray.transpose(_UPRIGHT[orientation])
    array = np.array(gray, dtype=np.uint8)
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE):
        square = np.full((IMAGE_SIZE, IMAGE_SIZE), _border_value(array), dtype=np.uint8)
        top, left = (IMAGE_SIZE - array.shape[0]) // 2, (IMAGE_SIZE - array.shape[1]) // 2
        square[top : top + array.shape[0], left : left + array.shape[1]] = array
        array = square
    inverted = _border_value(array) > 127
    if inverted:
        array = np.array(ImageOps.invert(Image.fromarray(array)), dtype=np.uint8)
    return array, inverted  # whether it was inverted goes into the prediction log


def _border_value(array: np.ndarray) -> int:
    border = np.sort(np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]]))
    middle = border.size // 2  # the median, as np.median computes it, without its overhead
    if border.size % 2:
        return int(border[middle])
    return int((int(border[middle - 1]) + int(border[middle])) / 2)


def normalize_array(images: np.ndarray) -> np.ndarray:
    """``uint8`` images shaped (H, W), (N, H, W) or (N, 1, H, W) → float32 (N, 1, H, W),
    standardised. The one normalisation of the project (training, evaluation and serving)."""
    array = np.asarray(images)
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != 1:
        raise ValueError(f"Expected grayscale images shaped (N, 1, H, W); got {array.shape}.")
    scaled = array.astype(np.float32) / np.float32(255.0)
    return (scaled - np.float32(MEAN)) / np.float32(STD)


def normalize(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """:func:`normalize_array` as a torch tensor (for training and evaluation)."""
    import torch  # only the training side pays for torch

    array = images.numpy() if isinstance(images, torch.Tensor) else images
    return torch.from_numpy(normalize_array(array))


def preprocess_array(
    data: bytes | memoryview,
    *,
    formats: Sequence[str] = ALLOWED_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
) -> np.ndarray:
    """Encoded bytes → normalised float32 array shaped (1, 28, 28), exactly as served."""
    image = decode_image(data, formats=formats, max_pixels=max_pixels, max_side=max_side)
    return normalize_array(to_model_image(image))[0]


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
