"""Data acquisition, versioning, validation and split settings (env prefix ``DATA_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "DATA_"

    # "kaggle", "url", or a path to a local folder holding the IDX files or the Kaggle CSV.
    source: str
    kaggle_dataset: str
    kaggle_file: str
    url_base: str
    download_retries: int = Field(ge=0)
    retry_delay_s: float = Field(ge=0)
    timeout_s: float = Field(gt=0)
    # A downloaded file larger than this is refused (the published files are about 26 MiB).
    download_max_bytes: int = Field(ge=1)
    # Prefect-level retries of the download task, on transient network errors only.
    task_retries: int = Field(ge=0)
    task_retry_delay_s: float = Field(ge=0)

    # DVC remote; a relative path is taken from the project root.
    dvc_remote_name: str
    dvc_remote_url: str
    # S3-compatible store that is not AWS (MinIO, Ceph, moto): its URL, kept in .dvc/config.local.
    dvc_remote_endpoint_url: str | None

    # Validation thresholds.
    min_rows: int = Field(ge=1)
    max_rows: int = Field(ge=1)
    class_share_min: float = Field(ge=0, le=1)
    class_share_max: float = Field(ge=0, le=1)
    max_duplicate_fraction: float = Field(ge=0, le=1)

    # Split of the training set.
    split_fractions: tuple[float, float, float]
    split_seed: int

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.min_rows > self.max_rows:
            raise ValueError("min_rows must not exceed max_rows")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError("split_fractions must sum to 1")
        return self
