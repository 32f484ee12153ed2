"""Monitoring settings (env prefix ``MONITOR_``): the prediction log, drift checks, retraining."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class DriftTestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The test flags drift when p < alpha AND its effect size reaches this.
    min_effect: float = Field(gt=0, le=1)


class MonitorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "MONITOR_"

    # --- prediction log (written by the API) ---
    log_predictions: bool
    # Any SQLAlchemy URL (postgresql+psycopg2://...); null = sqlite file under outputs/.
    store_url: str | None
    # Keep each answered image's 28x28 model input (784 bytes), needed to export feedback as data.
    store_images: bool
    queue_size: int = Field(ge=1)
    flush_interval_s: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    retention_days: float = Field(gt=0)
    retention_max_rows: int = Field(ge=1)
    # How often the API refreshes the row count and the last drift decision for /metrics.
    stats_interval_s: float = Field(gt=0)
    # --- feedback (POST /feedback: one row per answer, the last label wins) ---
    feedback_rate_per_minute: float = Field(gt=0)
    feedback_burst: int = Field(ge=1)
    # Client addresses whose rate is remembered (the least recently seen is forgotten first).
    feedback_max_clients: int = Field(ge=1)
    # Labelled answers one monitor run or export reads (the most recently labelled).
    max_labelled_rows: int = Field(ge=1)
    # --- low-confidence flag (calibrated on the validation split at training time) ---
    # The threshold makes answers at or above it this accurate on the validation split.
    low_confidence_target_accuracy: float = Field(gt=0, le=1)
    # --- monitor-flow ---
    experiment_name: str
    window_hours: float = Field(gt=0)
    min_predictions: int = Field(ge=1)
    # Labelled feedback needed before live accuracy counts as a drift test.
    min_feedback: int = Field(ge=1)
    # A test flags drift when p < alpha AND its effect size (KS D, total variation distance,
    # share difference) reaches its own drift_tests.<name>.min_effect, so huge windows do not
    # flag negligible shifts. One entry per test of src.monitoring.drift.DRIFT_TESTS.
    alpha: float = Field(gt=0, lt=1)
    drift_tests: dict[str, DriftTestConfig]
    # drift_detected when at least this many tests flag drift (a count: adding a test does not
    # change what the others decide).
    drift_min_flagged: int = Field(ge=1)
    # A window where the identical_inputs_top_k most repeated inputs make up at least
    # identical_inputs_max_share of the answers is a repeated upload, not drift: no decision.
    identical_inputs_top_k: int = Field(ge=1)
    identical_inputs_max_share: float = Field(gt=0, le=1)
    # Values per statistic kept in the reference profile (a seeded subsample of the validation split).
    reference_sample_size: int = Field(ge=50)
    retrain_on_drift: bool
    # Retraining needs drift in this many consecutive (non-overlapping) windows, the current one
    # included; then at most retrain_max_per_day drift-triggered runs, retrain_cooldown_hours
    # apart, and none while one is still queued or running.
    retrain_consecutive_windows: int = Field(ge=1)
    retrain_cooldown_hours: float = Field(ge=0)
    retrain_max_per_day: int = Field(ge=1)
    train_deployment: str
    schedule_cron: str
