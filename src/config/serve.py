"""HTTP serving settings (env prefix ``SERVE_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "SERVE_"

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    poll_interval_s: float = Field(default=10.0, gt=0)
    max_batch_files: int = Field(default=256, ge=1)
    max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    top_k: int = Field(default=3, ge=1, le=10)
    api_key: str | None = None
