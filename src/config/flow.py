"""Prefect flow settings (env prefix ``FLOW_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class FlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "FLOW_"

    # Cache download/validation/split results across runs, keyed on the data md5.
    cache_enabled: bool = True
    deployment_name: str = "weekly"
    schedule_cron: str = "0 3 * * 1"
    schedule_timezone: str = "UTC"
    work_pool: str = "local-process"
