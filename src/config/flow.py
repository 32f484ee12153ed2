"""Prefect flow settings (env prefix ``FLOW_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class FlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "FLOW_"

    # Cache download/validation/split results across runs, keyed on the data md5.
    cache_enabled: bool = True
    deployment_name: str = "weekly"
    schedule_cron: str = "0 3 * * 1"
    schedule_timezone: str = "UTC"
    work_pool: str = "local-process"
    # Runs of the train-flow deployment at once (Prefect deployment concurrency_limit); the
    # promotion itself is serialised regardless, by a global concurrency limit and a file lock.
    concurrency_limit: int = Field(default=1, ge=1)
    # How long a flow waits for another flow's promotion or data swap before giving up.
    lock_timeout_s: float = Field(default=3600.0, gt=0)
