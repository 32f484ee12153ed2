"""Constants that training, evaluation and serving share: the classes, the image size, the served file."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28
# Where each run keeps the form of its model that the API serves (ONNX: data, never code).
ONNX_MODEL_ARTIFACT = "onnx/model.onnx"
