"""Promotion gate settings (env prefix ``GATE_``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "GATE_"

    min_accuracy: float = Field(default=0.90, ge=0, le=1)
    min_macro_f1: float = Field(default=0.90, ge=0, le=1)
    # How a candidate is compared with the current Production model on the same test split.
    comparison: Literal["mcnemar", "margin"] = "mcnemar"
    alpha: float = Field(default=0.05, gt=0, lt=1)
    margin: float = Field(default=0.005, ge=0, le=1)
