"""Model and training settings (env prefix ``TRAIN_``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "TRAIN_"

    seed: int
    # The architecture: a name in ``src.model.NETWORKS`` and its shape.
    network: str
    widths: tuple[int, ...] = Field(min_length=1)
    blocks_per_stage: int = Field(ge=1)
    # Test-time augmentation inside the model, averaged in eval mode (so the exported/served model
    # gives exactly the evaluated answer): the mirror image, and 1-pixel shifts.
    flip_tta: bool
    translate_tta: bool
    # Who limits the run (src.training.budget): "time-fitted" = the epochs that fill
    # time_budget_minutes at the speed measured on this machine; "reproducible" = max_epochs,
    # deterministic algorithms, no clock.
    mode: Literal["time-fitted", "reproducible"]
    # The epoch count of the reproducible mode; in the time-fitted mode only a cap (None = none).
    max_epochs: int | None = Field(ge=1)
    # Time-fitted mode: the hard wall-clock cut of fit, validation passes included.
    max_time_minutes: float | None = Field(gt=0)
    # Time-fitted mode: the minutes the epoch plan fills (the LR schedule anneals over it).
    time_budget_minutes: float | None = Field(gt=0)
    batch_size: int = Field(ge=1)
    # The measured batch choice doubles batch_size (and the learning rate) up to this.
    batch_size_max: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    # Learning-rate schedule: "onecycle" (peak ``learning_rate``) or "cosine" (with warmup).
    schedule: Literal["onecycle", "cosine"]
    optimizer: Literal["sgd", "adamw"]
    learning_rate: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    warmup_fraction: float = Field(gt=0, lt=1)
    label_smoothing: float = Field(ge=0, lt=1)
    # Learning-rate multiplier of the normalisation and bias parameters (airbench's BN-bias lr).
    norm_lr_scale: float = Field(gt=0)
    # Exponential moving average of the weights (evaluated, checkpointed and exported); 0 = off.
    ema_decay: float = Field(ge=0, lt=1)
    # Augmentation, applied to whole batches on the device.
    crop_padding: int = Field(ge=0)
    hflip: bool
    random_erasing_p: float = Field(ge=0, le=1)
    # Cap on training images (None = all); the smoke profile trains on a few hundred.
    limit_train_samples: int | None = Field(ge=1)
    limit_eval_samples: int | None = Field(ge=1)
    # "auto": measured at run time (src.training.hardware); or a Lightning precision string.
    precision: str
    # Training steps timed per candidate precision by "auto".
    precision_probe_steps: int = Field(ge=1)
    # A run whose measured speed fits fewer epochs than this into the budget says so up front.
    min_epochs_warning: int = Field(ge=1)
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

    @model_validator(mode="after")
    def _mode_has_its_limit(self) -> TrainConfig:
        if self.mode == "time-fitted" and self.time_budget_minutes is None:
            raise ValueError(
                "mode time-fitted needs time_budget_minutes; set TRAIN_TIME_BUDGET_MINUTES "
                "(BUDGET= for make train) or TRAIN_MODE=reproducible"
            )
        if self.mode == "reproducible" and self.max_epochs is None:
            raise ValueError("mode reproducible needs max_epochs; set TRAIN_MAX_EPOCHS")
        return self
