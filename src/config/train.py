"""Model and training settings (env prefix ``TRAIN_``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

# name -> (channels per stage, residual blocks per stage). "custom" uses ``widths``/``blocks_per_stage``.
MODEL_PRESETS: dict[str, tuple[tuple[int, ...], int]] = {
    # CPU default: ResNet-20 layout (3 stages x 3 BasicBlocks, 16-32-64 channels).
    "resnet20": ((16, 32, 64), 3),
    # Wider but shallower: fewer, fatter convolutions (oneDNN is more efficient on wide layers).
    "wide-resnet": ((32, 64, 128), 2),
    # GPU: a ResNet18-shaped net (4 stages x 2 blocks, 64..512 channels) on the 28x28 input.
    "resnet18": ((64, 128, 256, 512), 2),
}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "TRAIN_"

    seed: int
    # Model shape: a preset name, or "custom" to use ``widths`` and ``blocks_per_stage``.
    model_preset: Literal["resnet20", "wide-resnet", "resnet18", "custom"]
    widths: tuple[int, ...]
    blocks_per_stage: int = Field(ge=1)
    # Test-time augmentation inside the model: logits of x and of its mirror image are averaged in
    # eval mode, so the exported/served model gives exactly the evaluated answer.
    flip_tta: bool
    max_epochs: int = Field(ge=1)
    # Hard stop for fit (Lightning ``max_time``), validation passes included.
    max_time_minutes: float | None = Field(gt=0)
    # Soft budget: after each epoch the epoch count is lowered to what fits in this many minutes,
    # and the LR schedule follows, so a busy machine still finishes the annealing phase. None = off.
    time_budget_minutes: float | None = Field(gt=0)
    batch_size: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    # Learning-rate schedule: "onecycle" (peak ``learning_rate``) or "cosine" (with warmup).
    schedule: Literal["onecycle", "cosine"]
    optimizer: Literal["sgd", "adamw"]
    learning_rate: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    warmup_fraction: float = Field(gt=0, lt=1)
    label_smoothing: float = Field(ge=0, lt=1)
    # Exponential moving average of the weights (evaluated, checkpointed and exported); 0 = off.
    ema_decay: float = Field(ge=0, lt=1)
    # Augmentation, applied to whole batches on the device.
    crop_padding: int = Field(ge=0)
    hflip: bool
    random_erasing_p: float = Field(ge=0, le=1)
    # Cap on training images (None = all); the smoke profile trains on a few hundred.
    limit_train_samples: int | None = Field(ge=1)
    limit_eval_samples: int | None = Field(ge=1)
    precision: str
    channels_last: bool
    accelerator: str
    devices: int | str
    strategy: str
    num_workers: int = Field(ge=0)
    # Validate every n epochs (each validation pass costs a fraction of an epoch).
    check_val_every_n_epoch: int = Field(ge=1)
    early_stopping_patience: int = Field(ge=1)
    # Resume from this Lightning checkpoint ("last" = the newest in the checkpoint folder).
    resume_from: str | None
    checkpoint_dir: str
    progress_bar: bool

    def resolved_shape(self) -> tuple[tuple[int, ...], int]:
        """(channels per stage, blocks per stage) for the chosen preset."""
        if self.model_preset == "custom":
            return tuple(self.widths), self.blocks_per_stage
        return MODEL_PRESETS[self.model_preset]
