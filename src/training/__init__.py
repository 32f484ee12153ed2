"""Lightning training of the Fashion-MNIST ResNet (no Prefect import).

``from src.training import train_model, TrainResult`` (imported lazily: ``src.evaluate`` uses
``src.training.data`` without pulling in the trainer).
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainResult", "train_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from src.training import train

        return getattr(train, name)
    raise AttributeError(f"module 'src.training' has no attribute {name!r}")
