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

    seed: int = 42
    # Model shape: a preset name, or "custom" to use ``widths`` and ``blocks_per_stage``.
    model_preset: Literal["resnet20", "wide-resnet", "resnet18", "custom"] = "resnet20"
    widths: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = Field(default=3, ge=1)
    # Test-time augmentation inside the model: logits of x and of its mirror image are averaged in
    # eval mode, so the exported/served model gives exactly the evaluated answer.
    flip_tta: bool = True
    max_epochs: int = Field(default=30, ge=1)
    # Hard stop for fit (Lightning ``max_time``), validation passes included.
    max_time_minutes: float | None = Field(default=30.0, gt=0)
    # Soft budget: after each epoch the epoch count is lowered to what fits in this many minutes,
    # and the LR schedule follows, so a busy machine still finishes the annealing phase. None = off.
    time_budget_minutes: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=128, ge=1)
    eval_batch_size: int = Field(default=1024, ge=1)
    # Learning-rate schedule: "onecycle" (peak ``learning_rate``) or "cosine" (with warmup).
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    warmup_fraction: float = Field(default=0.15, gt=0, lt=1)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    # Exponential moving average of the weights (evaluated, checkpointed and exported); 0 = off.
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    # Augmentation, applied to whole batches on the device.
    crop_padding: int = Field(default=2, ge=0)
    hflip: bool = True
    random_erasing_p: float = Field(default=0.25, ge=0, le=1)
    # Cap on training images (None = all); the smoke profile trains on a few hundred.
    limit_train_samples: int | None = Field(default=None, ge=1)
    limit_eval_samples: int | None = Field(default=None, ge=1)
    precision: str = "bf16-mixed"
    channels_last: bool = True
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_workers: int = Field(default=0, ge=0)
    # Validate every n epochs (validation costs ~10% of an epoch on the CPU).
    check_val_every_n_epoch: int = Field(default=1, ge=1)
    early_stopping_patience: int = Field(default=8, ge=1)
    # Resume from this Lightning checkpoint ("last" = the newest in the checkpoint folder).
    resume_from: str | None = None
    checkpoint_dir: str = "outputs/checkpoints"
    progress_bar: bool = True

    def resolved_shape(self) -> tuple[tuple[int, ...], int]:
        """(channels per stage, blocks per stage) for the chosen preset."""
        if self.model_preset == "custom":
            return tuple(self.widths), self.blocks_per_stage
        return MODEL_PRESETS[self.model_preset]
