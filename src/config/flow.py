"""Prefect flow settings (env prefix ``FLOW_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class FlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "FLOW_"

    deployment_name: str
    # train-flow's schedule; written only in configs/flow.yaml, deployments/deploy.py applies it.
    schedule_cron: str
    schedule_timezone: str
    work_pool: str
    # The Docker work pool of deployments/prefect-docker.yaml (flow runs in the training image).
    docker_work_pool: str
    # Runs of the train-flow deployment at once (Prefect deployment concurrency_limit); the
    # promotion itself is serialised regardless, by a global concurrency limit and a file lock.
    concurrency_limit: int = Field(ge=1)
    # How long a flow waits for another flow's promotion or data swap before giving up.
    lock_timeout_s: float = Field(gt=0)
