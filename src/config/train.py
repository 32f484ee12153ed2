"""Model and training settings (env prefix ``TRAIN_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "TRAIN_"

    seed: int = 42
    # ResNet shape: channels per stage and residual blocks per stage.
    widths: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = Field(default=3, ge=1)
    max_epochs: int = Field(default=30, ge=1)
    max_time_minutes: float | None = Field(default=30.0, gt=0)
    batch_size: int = Field(default=128, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # Cap on training images (None = all); the smoke profile trains on a few hundred.
    limit_train_samples: int | None = Field(default=None, ge=1)
    limit_eval_samples: int | None = Field(default=None, ge=1)
    precision: str = "bf16-mixed"
    channels_last: bool = True
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_workers: int = Field(default=0, ge=0)
    early_stopping_patience: int = Field(default=8, ge=1)
